"""HuggingFace export: a tiny checkpoint (GQA, a sliding window shorter than the context, value embeddings, residual
scalars, QK gain) goes through `python -m scripts.export_hf`, and transformers, offline, reproduces our logits (fp32)
and greedy generations, our tokenizer and chat format, runs pipeline("text-generation") on text and chat, and finds
the model card. A checkpoint without those features maps onto transformers' native `nanochat` type instead."""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nanochat import gpt
from nanochat.checkpoint_manager import PHASE_DIRS, load_model, save_checkpoint
from nanochat.common import REPO_DIR
from nanochat.gpt import GPT, GPTConfig
from nanochat.hf_export import check_export, export_model

if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed (pip install transformers)", allow_module_level=True)

from test_model_card import BANNED, MODEL_CONFIG, base_meta, sft_meta

ATOL = 1e-5


def randomized_model(model_config, seed):
    """A GPT whose every weight is random at a scale that spreads the logits (no near-ties for greedy decoding)."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**model_config))
    model.to_empty(device="cpu")
    model.init_weights()
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.5 if p.dim() < 2 else (1.0 if "value_embeds" in name or "wte" in name else p.size(-1) ** -0.5)
            p.copy_(torch.randn(p.shape, generator=rng) * std)
        model.lm_head.weight.mul_(3)
    return model.eval()


@pytest.fixture(scope="module")
def hf_offline(tmp_path_factory):
    """Offline, with transformers' remote-code module cache in a tmp dir (it is read when transformers imports)."""
    modules = tmp_path_factory.mktemp("hf_home") / "modules"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("HF_MODULES_CACHE", str(modules))
        if "transformers" in sys.modules:  # already imported in this session: repoint its cache
            from transformers import dynamic_module_utils

            mp.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(modules))
        yield


@pytest.fixture(scope="module")
def exported(hf_offline, tmp_path_factory, tiny_tokenizer):
    """base (step 20) -> sft (step 7) checkpoints in a tmp base dir, exported by the script as a user runs it."""
    base_dir = tmp_path_factory.mktemp("base")
    out = str(tmp_path_factory.mktemp("export") / "nanochat-d2-sft")
    config = {**MODEL_CONFIG, "vocab_size": tiny_tokenizer.get_vocab_size()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCHAT_BASE_DIR", str(base_dir))
        tiny_tokenizer.save(str(base_dir / "tokenizer"))
        base = randomized_model(config, seed=0)
        meta = {k: v for k, v in base_meta(config).items() if k not in ("step", "format_version")}
        ckpt = str(base_dir / PHASE_DIRS["base"] / "d2")
        save_checkpoint(ckpt, 20, base.state_dict(), base.setup_optimizer().state_dict(), meta)
        sft = randomized_model(config, seed=1)
        meta = {k: v for k, v in sft_meta(config).items() if k not in ("step", "format_version")}
        save_checkpoint(str(base_dir / PHASE_DIRS["sft"] / "d2"), 7, sft.state_dict(), None, meta)

        cmd = [sys.executable, "-m", "scripts.export_hf", "--source", "sft", "--model-tag", "d2", "--out", out]
        proc = subprocess.run(
            cmd, check=False, cwd=REPO_DIR, capture_output=True, text=True, timeout=300, env=dict(os.environ)
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        model, tokenizer, _ = load_model("sft", "cpu", model_tag="d2")
    return SimpleNamespace(out=out, stdout=proc.stdout, model=model, tokenizer=tokenizer, base_dir=base_dir)


@pytest.fixture(scope="module")
def hf_model(exported):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(exported.out, trust_remote_code=True, local_files_only=True).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    from transformers import AutoTokenizer

    # the tokenizer needs none of the export's code: trust_remote_code=False loads it without the interactive prompt
    # that a bare call shows (the bare call then takes the same path)
    return AutoTokenizer.from_pretrained(exported.out, trust_remote_code=False, local_files_only=True)


def stop_ids(tokenizer):
    return {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}


def ours_greedy(model, tokenizer, prompt, max_tokens):
    """Our naive greedy sampler, cut after the first stop token (the engine's stop set)."""
    out = []
    for token in model.generate(prompt, max_tokens=max_tokens, temperature=0):
        out.append(token)
        if token in stop_ids(tokenizer):
            break
    return out


# -----------------------------------------------------------------------------


def test_export_is_custom_and_says_why(exported):
    """The current architecture needs custom code: the script prints each missing native feature; files are there;
    the report card gets an export section with the measured check."""
    assert "export: custom modeling code" in exported.stdout
    section = json.loads((exported.base_dir / "report" / "huggingface-export.json").read_text())["data"]
    assert section["kind"] == "custom" and section["step"] == 7 and section["out_dir"] == exported.out
    assert "value embeddings" in section["missing native features"] and section["max_abs_logit_diff"] <= ATOL
    for feature in ("value embeddings", "residual scalars", "sliding windows [(0, 128)]", "multiplied by 1.2"):
        assert feature in exported.stdout
    names = set(os.listdir(exported.out))
    expected = {"config.json", "model.safetensors", "configuration_nanochat_full.py", "modeling_nanochat_full.py",
                "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"}  # fmt: skip
    assert expected <= names, expected - names
    modes = {name: os.stat(os.path.join(exported.out, name)).st_mode & 0o777 for name in expected}
    assert len(set(modes.values())) == 1, modes  # the weights as readable as the rest (safetensors writes 0600)
    with open(os.path.join(exported.out, "config.json")) as f:
        config = json.load(f)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_full.NanoChatFullForCausalLM"
    assert config["window_sizes"] == [128, 160] and config["value_embedding_layers"] == [1]
    assert config["qk_gain"] == 1.2 and config["num_key_value_heads"] == 1
    with open(os.path.join(exported.out, "generation_config.json")) as f:
        gen = json.load(f)
    tok = exported.tokenizer
    assert gen["eos_token_id"] == [tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()]
    assert gen["bos_token_id"] == tok.get_bos_token_id()


def test_logits_match_ours(exported, hf_model):
    """fp32 logits equal ours past the short window (128) and past the context (160), on a batch of 2."""
    rng = torch.Generator().manual_seed(0)
    idx = torch.randint(0, exported.tokenizer.get_vocab_size(), (2, 200), generator=rng)
    idx[:, 0] = exported.tokenizer.get_bos_token_id()
    with torch.no_grad():
        ours = exported.model(idx)
        theirs = hf_model(idx).logits
    assert theirs.dtype == torch.float32 and theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def test_greedy_generation_matches_ours(exported, hf_model):
    """HF generate (KV cache, across the 128-token window) greedily yields our tokens; left-padded batches too."""
    tok, model = exported.tokenizer, exported.model
    rng = torch.Generator().manual_seed(1)
    long_prompt = [tok.get_bos_token_id()] + torch.randint(0, 500, (118,), generator=rng).tolist()
    short_prompt = tok.encode("The quick brown fox", prepend=tok.get_bos_token_id())
    chat_prompt = tok.render_for_completion(
        {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": ""}]}
    )
    for prompt, n in ((long_prompt, 14), (short_prompt, 8), (chat_prompt, 8)):  # 119 + 14 tokens cross the window
        ours = ours_greedy(model, tok, prompt, max_tokens=n)
        with torch.no_grad():
            theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt) :]
        assert theirs.tolist() == ours

    prompts = [short_prompt, long_prompt[:40]]  # different lengths: the shorter one is left-padded
    width = max(map(len, prompts))
    pad = tok.encode_special("<|assistant_end|>")
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None
        )
    for row, prompt in zip(out, prompts):
        assert row[width:].tolist() == list(model.generate(prompt, max_tokens=8, temperature=0))


def test_export_check_catches_broken_cached_decoding(exported, tmp_path):
    """The check at export fails loudly when cached decoding drifts (transformers 5.24 renamed the cache argument,
    and code that missed it decoded each step without its past): a copy of the export that drops its cache."""
    import shutil

    broken = tmp_path / "broken-cache-export"  # its own name: transformers keys remote-code modules by folder name
    shutil.copytree(exported.out, broken)
    code = (broken / "modeling_nanochat_full.py").read_text()
    assert code.count("cache = past_key_values if cache is None else cache") == 1
    (broken / "modeling_nanochat_full.py").write_text(
        code.replace("past_key_values if cache is None else cache", "None")
    )
    with pytest.raises(AssertionError, match="cached decoding differs from ours"):
        check_export(exported.model, exported.tokenizer, str(broken), "custom")


TEXTS = [
    "hello world",
    "Unicode: café naïve Straße 東京 안녕하세요 こんにちは Привет 🚀🎉👍🏽 e\u0301 \u200b zero-width",
    "def f(x):\n\treturn x ** 2  # comment\n\n\n    indented()\r\n",
    "Numbers 0 7 42 123 4567 89012 3.14159 -2.5e-10 1,000,000 0x1F 2024-01-31 ١٢٣",
    "   leading spaces, trailing spaces   \n\n\t\t\r\n  \t mixed   \n",
    "It's we'll they've I'M DON'T o'clock",
    "\x00\x01 control \x7f bytes 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <html><|not_special|></html>",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello!\nHow are you?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute: "},
                {"type": "python", "text": "12 * 7"},
                {"type": "python_output", "text": "84"},
                {"type": "text", "text": " So 84."},
            ],
        },
        {"role": "user", "content": "  Merci  "},
        {"role": "assistant", "content": "De rien 🙂"},
    ],
]


def test_tokenizer_matches_ours(exported, hf_tokenizer):
    """Same ids and text as ours on unicode, code, numbers, whitespace; specials; chat template and generation prompt."""
    tok = exported.tokenizer
    bos = tok.get_bos_token_id()
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert hf_tokenizer.encode(text) == [bos] + ids, text  # BOS first, as nanochat starts every document
        assert hf_tokenizer.decode(ids) == tok.decode(ids)
    for name in ("<|bos|>", "<|user_start|>", "<|assistant_end|>", "<|python_start|>", "<|output_end|>"):
        assert hf_tokenizer.convert_tokens_to_ids(name) == tok.encode_special(name)
    assert hf_tokenizer.bos_token == "<|bos|>" and hf_tokenizer.eos_token == "<|assistant_end|>"
    for messages in CONVERSATIONS:
        ids, _ = tok.render_conversation({"messages": messages}, max_tokens=None)
        hf_ids = list(hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        assert hf_ids == ids
        assert hf_tokenizer.decode(hf_ids) == tok.decode(ids)  # special tokens decode to their strings
        prompt = tok.render_for_completion({"messages": messages})
        hf_prompt = hf_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False)
        assert list(hf_prompt) == prompt
    with pytest.raises(Exception, match="alternate"):
        hf_tokenizer.apply_chat_template([{"role": "assistant", "content": "first"}], tokenize=False)


def test_pipeline_text_and_chat(exported):
    """pipeline('text-generation') continues plain text and answers chat messages, stopping at <|assistant_end|>."""
    from transformers import pipeline

    tok, model = exported.tokenizer, exported.model
    generate = pipeline("text-generation", model=exported.out, trust_remote_code=True)
    out = generate("The quick brown fox", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    prompt = tok.encode("The quick brown fox", prepend=tok.get_bos_token_id())
    expected = ours_greedy(model, tok, prompt, 8)
    assert out == "The quick brown fox" + tok.decode([t for t in expected if t not in stop_ids(tok)])

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    reply = generate(messages, max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert [m["role"] for m in reply] == ["system", "user", "assistant"]
    prompt = tok.render_for_completion({"messages": messages + [{"role": "assistant", "content": ""}]})
    expected = ours_greedy(model, tok, prompt, 20)
    assert reply[-1]["content"] == tok.decode([t for t in expected if t not in stop_ids(tok)])


def test_model_card_in_export(exported):
    """README.md: front matter, load snippet, export decision and check, both stages with their metrics, no filler."""
    with open(os.path.join(exported.out, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert card.startswith("---\nlicense: mit\nlibrary_name: transformers\n") and "- custom_code" in card
    assert f'path = "{exported.out}"' in card and "AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)"
    assert "value embeddings with gates on layers [1]" in card and "max abs logit difference vs nanochat" in card
    assert "over 8 greedy steps of transformers' generate (KV cache)" in card
    assert "### 1. base pretraining: `base_checkpoints/d2`, step 20" in card
    assert "### 2. supervised fine-tuning (SFT): `chatsft_checkpoints/d2`, step 7" in card
    assert "| hellaswag_zeroshot |" in card and "| ARC-Easy | 0.3125 |" in card and "| ChatCORE | - | 0.0412 |" in card
    assert "Read from the rank-0 optimizer file" in card  # base's optimizer groups, from its optim file
    low = card.lower()
    assert not [w for w in BANNED if w in low]


def test_native_type_when_no_missing_feature(hf_offline, tmp_path, tiny_tokenizer, monkeypatch):
    """Without value embeddings, scalars, short windows and QK gain, the export is transformers' own NanoChat, exact."""
    from transformers import AutoModelForCausalLM, NanoChatForCausalLM

    monkeypatch.setattr(gpt, "QK_GAIN", 1.0)
    config = {**MODEL_CONFIG, "vocab_size": tiny_tokenizer.get_vocab_size(), "window_pattern": "L", "n_kv_head": 2}
    model = randomized_model(config, seed=2)
    with torch.no_grad():
        for ve in model.value_embeds.values():
            ve.weight.zero_()
        model.resid_lambdas.fill_(1.0)
        model.x0_lambdas.zero_()
    info = export_model(model, tiny_tokenizer, str(tmp_path))
    assert info["kind"] == "native" and info["reasons"] == [] and info["notes"]
    assert "modeling_nanochat_full.py" not in os.listdir(tmp_path)
    assert check_export(model, tiny_tokenizer, str(tmp_path), "native")["max_abs_logit_diff"] <= ATOL
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert isinstance(hf, NanoChatForCausalLM)
    idx = torch.randint(0, config["vocab_size"], (2, 150), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=ATOL, rtol=0)
    prompt = tiny_tokenizer.encode("Once upon a time", prepend=tiny_tokenizer.get_bos_token_id())
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt) :]
    assert theirs.tolist() == ours_greedy(model, tiny_tokenizer, prompt, 20)


def test_any_missing_feature_forces_custom_code(tiny_tokenizer):
    """Each feature the native type lacks, alone, is named and sends the export to custom code (no silent drop)."""
    from nanochat.hf_export import native_mismatches

    config = {**MODEL_CONFIG, "vocab_size": tiny_tokenizer.get_vocab_size(), "window_pattern": "L"}
    model = randomized_model(config, seed=4)
    with torch.no_grad():
        for ve in model.value_embeds.values():
            ve.weight.zero_()
        model.resid_lambdas.fill_(1.0)
        model.x0_lambdas.zero_()
    assert native_mismatches(model) == ["q and k multiplied by 1.2 after QK-norm (native has no gain)"]
    with torch.no_grad():
        model.x0_lambdas[0] = 0.5
    assert any("residual scalars" in r for r in native_mismatches(model))
    with torch.no_grad():
        model.x0_lambdas.zero_()
        model.value_embeds["1"].weight[3, 0] = 1.0
    assert any("value embeddings" in r for r in native_mismatches(model))
