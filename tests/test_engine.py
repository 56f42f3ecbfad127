"""
The inference engine against the naive reference (GPT.generate, full recompute), its sampling, stops, tool use,
and the chat CLI end to end. Tiny models (2 layers, 64 wide) on CPU.
"""

import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from torch import nn

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.common import REPO_DIR
from nanochat.engine import FINISHED, Engine, parse_assistant_tokens, sample_next_token, use_calculator
from nanochat.gpt import GPT, GPTConfig

# -----------------------------------------------------------------------------
# Models


def make_model(
    vocab_size, sequence_len=64, n_head=4, n_kv_head=2, window_sizes=None, seed=0, randomize=True, device="cpu"
):
    """A 2-layer, 64-wide GPT. randomize=True replaces the init (zero output projections, near-zero head) with
    random weights of useful scale, so that attention, windows and positions all change the greedy tokens."""
    config = GPTConfig(
        sequence_len=sequence_len, vocab_size=vocab_size, n_layer=2, n_head=n_head, n_kv_head=n_kv_head, n_embd=64
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2 and "wte" not in name and "value_embeds" not in name:
                    p.normal_(0.0, 1.5 / p.size(1) ** 0.5)
    if window_sizes is not None:
        model.window_sizes = window_sizes  # shorter than the sequence, which the 128-rounded "S" never is at T=64
    model.eval()
    return model


def naive_greedy(model, tokens, max_tokens):
    return list(model.generate(list(tokens), max_tokens, temperature=0.0))


def run(gen):
    """Drain a generator of columns into per-row lists of (token, mask), FINISHED entries dropped."""
    rows = None
    for token_column, mask_column in gen:
        if rows is None:
            rows = [[] for _ in token_column]
        for i, (t, m) in enumerate(zip(token_column, mask_column)):
            if t != FINISHED:
                rows[i].append((t, m))
    return rows or []


def tokens_of(row):
    return [t for t, _ in row]


class ScriptedModel(nn.Module):
    """Stands in for a GPT: the next token is script(row, step) as a one-hot logit, step = index of the token being
    predicted among the row's generated tokens. Records every input it is fed."""

    def __init__(self, vocab_size, sequence_len, prompt_lens, script):
        super().__init__()
        self.config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=1, n_head=1, n_kv_head=1)
        self.config.n_embd = 8
        self.compute_dtype = torch.float32
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the engine a device
        self.prompt_lens, self.script, self.inputs = prompt_lens, script, []

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        self.inputs.append((idx.tolist(), kv_cache.cache_seqlens.tolist()))
        logits = torch.full((B, T, self.config.vocab_size), -10.0)
        for b in range(B):
            if T > 1:  # a batch-1 prefill from position 0: its length says which prompt (lengths are distinct)
                row = self.prompt_lens.index(T)
            else:
                row = b if len(self.prompt_lens) > 1 else 0
            for t in range(T):
                step = int(kv_cache.cache_seqlens[b]) + t + 1 - self.prompt_lens[row]
                if step >= 0:
                    try:
                        logits[b, t, self.script(row, step)] = 10.0
                    except IndexError:  # past the end of a list script: a finished row being fed filler
                        pass
        kv_cache.advance(T)
        return logits


# -----------------------------------------------------------------------------
# Cached == naive


@pytest.mark.parametrize(
    "n_head,n_kv_head,window_sizes",
    [(4, 4, None), (4, 2, None), (4, 1, [7, 64]), (4, 2, [5, 11])],
    ids=["mha", "gqa", "mqa-window7", "gqa-windows5-11"],
)
def test_cached_greedy_matches_naive(tiny_tokenizer, n_head, n_kv_head, window_sizes):
    """KV-cached greedy decoding gives the same tokens as recomputing the full sequence per token, with GQA/MQA and
    with sliding windows shorter than the sequence."""
    model = make_model(tiny_tokenizer.get_vocab_size(), n_head=n_head, n_kv_head=n_kv_head, window_sizes=window_sizes)
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()  # compare pure decoding; stops are tested below
    prompt = tiny_tokenizer.encode("It is a truth universally acknowledged", prepend="<|bos|>")
    expected = naive_greedy(model, prompt, 30)
    assert len(expected) == 30
    rows = run(engine.generate(prompt, num_samples=2, max_tokens=30, temperature=0.0))
    assert tokens_of(rows[0]) == expected
    assert tokens_of(rows[1]) == expected
    assert engine.stop_reasons == ["max_tokens", "max_tokens"]


def test_generate_multi_matches_per_prompt_generation(tiny_tokenizer):
    """Different prompts decoded together (per-row positions, rows stopping at different steps on the context)
    give each prompt's own greedy continuation."""
    seq_len = 48
    model = make_model(tiny_tokenizer.get_vocab_size(), sequence_len=seq_len, n_kv_head=2, window_sizes=[9, 48])
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    bos = tiny_tokenizer.get_bos_token_id()
    texts = ["To be", "In the beginning God created the heaven and the earth.", "def add(a, b): return a + b"]
    prompts = [tiny_tokenizer.encode(t, prepend=bos) for t in texts]
    prompts.append((prompts[1] * 4)[: seq_len - 3])  # 3 tokens from the end of the context
    rows = run(engine.generate_multi(prompts, max_tokens=20, temperature=0.0))
    assert engine.stop_reasons == ["max_tokens", "max_tokens", "max_tokens", "context"]
    assert [len(r) for r in rows] == [20, 20, 20, 3]
    for prompt, row in zip(prompts, rows):
        expected = naive_greedy(model, prompt, 20)
        assert tokens_of(row) == expected
        single = run(engine.generate(prompt, max_tokens=20, temperature=0.0))[0]
        assert tokens_of(single) == expected


def test_prefill_runs_once_for_many_samples(tiny_tokenizer):
    """num_samples rows share one batch-1 prefill; then every decode step is one (num_samples, 1) forward."""
    model = make_model(tiny_tokenizer.get_vocab_size())
    shapes = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(args[0].shape)), with_kwargs=True)
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    prompt = tiny_tokenizer.encode("hello there", prepend="<|bos|>")
    run(engine.generate(prompt, num_samples=4, max_tokens=5, temperature=1.0))
    assert shapes == [(1, len(prompt))] + [(4, 1)] * 4


# -----------------------------------------------------------------------------
# Sampling


def test_samples_are_independent_and_seeded(tiny_tokenizer):
    """At temperature 1 on a near-uniform (freshly initialised) model the rows differ from each other, from their
    first token on; the same seed reproduces every token, another seed does not."""
    model = make_model(tiny_tokenizer.get_vocab_size(), randomize=False)
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    prompt = tiny_tokenizer.encode("hello", prepend="<|bos|>")
    a = [tokens_of(r) for r in run(engine.generate(prompt, num_samples=8, max_tokens=8, seed=1))]
    b = [tokens_of(r) for r in run(engine.generate(prompt, num_samples=8, max_tokens=8, seed=1))]
    c = [tokens_of(r) for r in run(engine.generate(prompt, num_samples=8, max_tokens=8, seed=2))]
    assert a == b
    assert a != c
    assert len({tuple(r) for r in a}) == 8
    assert len({r[0] for r in a}) >= 6  # first tokens are sampled per row, not shared


def test_top_k_and_top_p_restrict_the_support():
    """With rigged probabilities [0.5, 0.3, 0.15, 0.05]: top-k 2 and top-p 0.8 only ever give tokens {0, 1};
    top-p 0.81 adds token 2; temperature 0 always gives token 0."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * 4)
    logits = probs.clamp_min(1e-30).log().expand(4000, -1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, gen).tolist()) == {0, 1, 2, 3}
    assert set(sample_next_token(logits, gen, top_k=2).tolist()) == {0, 1}
    assert set(sample_next_token(logits, gen, top_p=0.8).tolist()) == {0, 1}
    assert set(sample_next_token(logits, gen, top_p=0.81).tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits, gen, top_k=3, top_p=0.5).tolist()) == {0}
    assert set(sample_next_token(logits, gen, temperature=0.0).tolist()) == {0}
    counts = torch.bincount(sample_next_token(logits, gen, top_k=2), minlength=8).float()
    assert abs(counts[0] / counts.sum() - 0.5 / 0.8) < 0.05  # renormalised over the kept tokens


def test_engine_applies_top_k(tiny_tokenizer):
    """Through the engine, top_k=3 keeps every sampled token among the model's 3 likeliest."""
    model = make_model(tiny_tokenizer.get_vocab_size())
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    prompt = tiny_tokenizer.encode("hello", prepend="<|bos|>")
    top3 = set(torch.topk(model(torch.tensor([prompt]))[0, -1], 3).indices.tolist())
    first_tokens = next(engine.generate(prompt, num_samples=64, max_tokens=1, temperature=2.0, top_k=3))[0]
    assert set(first_tokens) <= top3
    assert len(set(first_tokens)) > 1


# -----------------------------------------------------------------------------
# Stops


def test_stop_reasons_and_finished_rows(tiny_tokenizer):
    """A row that emits <|assistant_end|> yields it and then only FINISHED (mask 0) while others run on; the others
    stop on max_tokens or on the context; the reasons say which."""
    V = tiny_tokenizer.get_vocab_size()
    end = tiny_tokenizer.encode_special("<|assistant_end|>")
    a = tiny_tokenizer.encode("a")[0]
    prompts = [[1, 2, 3], [1, 2, 3, 4, 5], [1] * 28]
    model = ScriptedModel(V, 32, [len(p) for p in prompts], lambda row, step: end if (row, step) == (0, 2) else a)
    engine = Engine(model, tiny_tokenizer)
    columns = list(engine.generate_multi(prompts, max_tokens=6, temperature=0.0))
    assert [c[0][0] for c in columns] == [a, a, end, FINISHED, FINISHED, FINISHED]
    assert [c[1][0] for c in columns] == [1, 1, 1, 0, 0, 0]
    assert [c[0][1] for c in columns] == [a] * 6
    assert [c[0][2] for c in columns] == [a, a, a, a, FINISHED, FINISHED]  # 28 + 4 = 32 = sequence_len
    assert engine.stop_reasons == ["end", "max_tokens", "context"]
    # finished rows are pinned: no forward ever reaches past the 32 positions of the cache
    assert all(max(seqlens) < 32 for _, seqlens in model.inputs)


def test_context_limits(tiny_tokenizer):
    """A prompt that exactly fills the context yields nothing (reason "context"); a longer one raises ValueError;
    max_tokens=0 yields nothing; without max_tokens a row runs to the context and not past it."""
    V = tiny_tokenizer.get_vocab_size()
    a = tiny_tokenizer.encode("a")[0]
    model = ScriptedModel(V, 16, [10], lambda row, step: a)
    engine = Engine(model, tiny_tokenizer)
    assert run(engine.generate([1] * 10, num_samples=2, temperature=0.0)) == [[(a, 1)] * 6] * 2
    assert engine.stop_reasons == ["context", "context"]
    assert run(engine.generate([1] * 16)) == []
    assert engine.stop_reasons == ["context"]
    assert run(engine.generate([1] * 10, max_tokens=0)) == []
    assert engine.stop_reasons == ["max_tokens"]
    with pytest.raises(ValueError, match="exceeds the model's context"):
        run(engine.generate([1] * 17))


def test_real_model_stops_on_a_stop_token(tiny_tokenizer):
    """The default stop tokens are <|assistant_end|> and <|bos|>; with a real model, a stop token is yielded, the row
    stops with "end", and generate_batch returns prompt + tokens without the stop token (mask 1 on them)."""
    model = make_model(tiny_tokenizer.get_vocab_size())
    engine = Engine(model, tiny_tokenizer)
    specials = {tiny_tokenizer.encode_special("<|assistant_end|>"), tiny_tokenizer.get_bos_token_id()}
    assert engine.stop_token_ids == specials
    prompt = tiny_tokenizer.encode("hello", prepend="<|bos|>")
    free = naive_greedy(model, prompt, 12)
    k = next(i for i in range(1, 12) if free[i] not in free[:i])  # the first token not seen before
    engine.stop_token_ids = {free[k]}
    rows = run(engine.generate(prompt, max_tokens=12, temperature=0.0))
    assert tokens_of(rows[0]) == free[: k + 1]
    assert engine.stop_reasons == ["end"]
    results, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=0.0)
    assert results == [prompt + free[:k]] * 2
    assert masks == [[0] * len(prompt) + [1] * k] * 2


# -----------------------------------------------------------------------------
# Tool use


def tool_script(tokenizer, expr, after):
    """Tokens a model 'writes': <|python_start|> expr <|python_end|>, then `after` (list of ids)."""
    return [
        tokenizer.encode_special("<|python_start|>"),
        *tokenizer.encode(expr),
        tokenizer.encode_special("<|python_end|>"),
    ], after


def test_tool_use_forces_the_calculator_output(tiny_tokenizer):
    """After <|python_start|>expr<|python_end|> the engine forces <|output_start|> str(result) <|output_end|> with
    mask 0, feeds those tokens to the model, then sampling resumes (mask 1) until <|assistant_end|>."""
    tok = tiny_tokenizer
    special = tok.encode_special
    call, _ = tool_script(tok, '"strawberry".count("r") * 2 + 1', [])
    forced = [special("<|output_start|>"), *tok.encode("7"), special("<|output_end|>")]
    tail = tok.encode(" so 7.") + [special("<|assistant_end|>")]
    filler = tok.encode("x")[0]
    # the model's choice during the forced steps is ignored: fill them with a token that must not appear
    script_tokens = call + [filler] * len(forced) + tail
    prompt = tok.encode("how many", prepend="<|bos|>") + [special("<|assistant_start|>")]
    model = ScriptedModel(tok.get_vocab_size(), 64, [len(prompt)], lambda row, step: script_tokens[step])
    engine = Engine(model, tok)
    rows = run(engine.generate(prompt, num_samples=2, temperature=0.0))
    expected = call + forced + tail
    for row in rows:
        assert tokens_of(row) == expected
        assert [m for _, m in row] == [1] * len(call) + [0] * len(forced) + [1] * len(tail)
    assert engine.stop_reasons == ["end", "end"]
    fed = [ids[0][0] for ids, _ in model.inputs[1:]]  # decode steps feed row 0's last token
    assert fed == expected[:-1]  # the forced tokens went through the model, the stop token was not fed
    content = parse_assistant_tokens(tok, tokens_of(rows[0]))
    assert content == [
        {"type": "python", "text": '"strawberry".count("r") * 2 + 1'},
        {"type": "python_output", "text": "7"},
        {"type": "text", "text": " so 7."},
    ]


def test_tool_use_refused_expression_forces_nothing(tiny_tokenizer):
    """A hostile tool call produces no forced tokens: the model's own next tokens follow <|python_end|>."""
    tok = tiny_tokenizer
    call, _ = tool_script(tok, "__import__('os').system('ls')", [])
    assert use_calculator("__import__('os').system('ls')") is None
    tail = tok.encode(" ok") + [tok.encode_special("<|assistant_end|>")]
    script_tokens = call + tail
    prompt = [tok.get_bos_token_id()]
    model = ScriptedModel(tok.get_vocab_size(), 64, [1], lambda row, step: script_tokens[step])
    engine = Engine(model, tok)
    rows = run(engine.generate(prompt, temperature=0.0))
    assert rows[0] == [(t, 1) for t in call + tail]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine(tiny_tokenizer, monkeypatch):
    """On CUDA: in fp32 cached greedy == naive greedy (windows, GQA); in bf16 the engine decodes several samples and
    several prompts to max_tokens with the same stop rules."""
    V = tiny_tokenizer.get_vocab_size()
    prompt = tiny_tokenizer.encode("It is a truth universally acknowledged", prepend="<|bos|>")
    monkeypatch.setenv("NANOCHAT_DTYPE", "float32")
    model = make_model(V, n_kv_head=2, window_sizes=[7, 64], device="cuda")
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    expected = naive_greedy(model, prompt, 20)
    rows = run(engine.generate(prompt, num_samples=2, max_tokens=20, temperature=0.0))
    assert [tokens_of(r) for r in rows] == [expected, expected]

    monkeypatch.setenv("NANOCHAT_DTYPE", "bfloat16")
    model = make_model(V, n_head=1, n_kv_head=1, device="cuda")
    assert model.compute_dtype == torch.bfloat16
    engine = Engine(model, tiny_tokenizer)
    engine.stop_token_ids = set()
    rows = run(engine.generate(prompt, num_samples=3, max_tokens=10, temperature=1.0, top_k=20))
    assert [len(r) for r in rows] == [10, 10, 10] and engine.stop_reasons == ["max_tokens"] * 3
    rows = run(engine.generate_multi([prompt, prompt[:3], [1] * 60], max_tokens=10, temperature=0.0))
    assert [len(r) for r in rows] == [10, 10, 4] and engine.stop_reasons == ["max_tokens", "max_tokens", "context"]


# -----------------------------------------------------------------------------
# Chat CLI end to end


@pytest.fixture
def chat_base_dir(tmp_path, tiny_tokenizer):
    """A base dir with the tiny tokenizer and a d2 base checkpoint of 64 tokens of context."""
    tiny_tokenizer.save(str(tmp_path / "tokenizer"))
    model = make_model(tiny_tokenizer.get_vocab_size(), sequence_len=64, n_kv_head=4)
    meta = {"model_config": asdict(model.config), "user_config": {}}
    save_checkpoint(str(tmp_path / "base_checkpoints" / "d2"), 0, model.state_dict(), None, meta)
    return tmp_path


def run_cli(base_dir, *args, stdin=""):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir), "NANOCHAT_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scripts.chat_cli", "-i", "base", *args]
    return subprocess.run(
        cmd, check=False, cwd=REPO_DIR, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_chat_cli_one_shot_and_interactive(chat_base_dir):
    """`-p` prints one streamed reply (and says when it was cut) and exits 0; interactively, a message that does not
    fit the context is refused with a 'conversation is full' note (no crash), `clear` resets, `quit` exits 0."""
    out = run_cli(chat_base_dir, "-p", "Hello there", "-t", "0", "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() != ""
    assert "[reply cut at --max-tokens 8]" in out.stderr  # a random model does not end its turn in 8 tokens
    too_long = " ".join(["word"] * 200)
    out = run_cli(chat_base_dir, "-p", too_long)
    assert out.returncode == 1 and "conversation is full" in out.stderr
    stdin = f"hello\n{too_long}\nclear\nhi again\nquit\n"
    out = run_cli(chat_base_dir, "-t", "0.8", "-k", "20", "--max-tokens", "4", stdin=stdin)
    assert out.returncode == 0, out.stderr
    assert "conversation is full" in out.stdout
    assert "[new conversation]" in out.stdout
    assert out.stdout.count("Assistant:") == 2
