"""
nanochat/chat_data.py: the conversation packing loader (assistant-only targets, whole conversations, padding at row
ends, exact resume, disjoint ranks, epochs), the fine-tuning schedules and optimizer hand-over, RL rollout batches,
and the chat evaluation helpers. Tiny tokenizer (conftest) and the task fixtures shipped in the repo.
"""

import json
import os

import pytest
import torch

from nanochat.chat_data import (
    ChatLoader,
    centered,
    chatcore,
    finetune_momentum,
    generative_outcomes,
    load_optimizer_moments,
    mid_train_mixture,
    pass_at_k,
    policy_gradient_backward,
    predict_letters,
    progress_lr_multiplier,
    rollout_batch,
    sft_train_mixture,
    val_mixture,
)
from nanochat.common import PACKAGE_DATA_DIR
from nanochat.gpt import GPT, GPTConfig
from tasks.common import Task

FIXTURES = os.path.join(PACKAGE_DATA_DIR, "tasks")


@pytest.fixture(autouse=True)
def fixture_task_dir(monkeypatch):
    monkeypatch.setenv("NANOCHAT_TASK_DIR", FIXTURES)


class ListTask(Task):
    def __init__(self, conversations, **kwargs):
        super().__init__(**kwargs)
        self.conversations = conversations

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]


def chat(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def varied_task(n):
    """n short conversations of varied lengths."""
    return ListTask([chat(f"question {i} " + "why " * (i % 7), "because " * (1 + i % 5) + str(i)) for i in range(n)])


def check_batch(loader, tokenizer, x, y):
    """Rebuild every row from the loader's layout and the render alone, and compare with the batch."""
    T, bos = loader.T, tokenizer.get_bos_token_id()
    for b, layout in enumerate(loader.layout):
        row_ids, row_mask = [], []
        for index, length in layout:
            ids, mask = tokenizer.render_conversation(loader.task[index], max_tokens=None)
            assert length == min(len(ids), T + 1), "a conversation was cropped to fit a row"
            row_ids += ids[:length]
            row_mask += mask[:length]
        pad = T + 1 - len(row_ids)
        assert pad >= 0 and layout, f"row {b}: {len(row_ids)} tokens for a row of {T + 1}"
        row_ids += [bos] * pad
        row_mask += [0] * pad
        assert x[b].tolist() == row_ids[:-1]
        assert y[b].tolist() == [t if m == 1 else -1 for t, m in zip(row_ids[1:], row_mask[1:])]
        assert x[b, 0].item() == bos
        if pad:  # padding only at the row end: BOS inputs, no targets
            assert (x[b, T + 1 - pad :] == bos).all() and (y[b, T - pad :] == -1).all()


def test_targets_are_assistant_tokens_of_whole_conversations(tiny_tokenizer):
    """Rows are whole conversations (or one cut at T+1) then BOS padding; targets only on assistant tokens."""
    tok = tiny_tokenizer
    loader = ChatLoader(mid_train_mixture(spellingbee_size=30), tok, B=3, T=128)
    allowed_specials = {tok.encode_special(s) for s in ("<|assistant_end|>", "<|python_start|>", "<|python_end|>")}
    specials = {tok.encode_special(s) for s in tok.get_special_tokens()}
    padded_rows = 0
    for _ in range(8):
        x, y = next(loader)
        assert x.shape == y.shape == (3, 128) and x.dtype == y.dtype == torch.int64
        check_batch(loader, tok, x, y)
        trained = set(y[y >= 0].tolist())
        assert not (trained & specials) - allowed_specials, "a target on BOS, user or tool-output markers"
        padded_rows += sum(sum(length for _, length in layout) < 129 for layout in loader.layout)
    assert loader.truncated > 0 and padded_rows > 0, "the fixture mixture should exercise truncation and padding"
    assert 0 < loader.pad_fraction < 0.5


def test_long_conversation_is_cut_at_row_length_and_fills_a_row_alone(tiny_tokenizer):
    """A conversation longer than T+1 tokens is cut by the render to T+1 and is the only one in its row."""
    long = chat("tell me everything", "word " * 200)
    task = ListTask([chat("hi", "hello"), long, chat("a", "b")])
    loader = ChatLoader(task, tiny_tokenizer, B=3, T=32)
    x, y = next(loader)
    check_batch(loader, tiny_tokenizer, x, y)
    rows_with_long = [layout for layout in loader.layout if any(index == 1 for index, _ in layout)]
    assert rows_with_long and all(layout == [(1, 33)] for layout in rows_with_long)
    assert loader.truncated >= 1


def test_resume_is_exact(tiny_tokenizer):
    """A loader restored from a JSON round trip of the state after batch k yields the same batches as the original."""
    task = sft_train_mixture(spellingbee_size=20)
    a = ChatLoader(task, tiny_tokenizer, B=2, T=64, rank=1, world_size=2, buffer_size=7)
    for _ in range(3):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(6)]
    b = ChatLoader(task, tiny_tokenizer, B=2, T=64, rank=1, world_size=2, buffer_size=7)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, [next(b) for _ in range(6)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.state_dict() == b.state_dict()
    c = ChatLoader(task, tiny_tokenizer, B=2, T=64, rank=0, world_size=2, buffer_size=7)
    with pytest.raises(AssertionError, match="rank"):
        c.load_state_dict(state)


def test_ranks_are_disjoint_and_an_epoch_is_every_conversation_once(tiny_tokenizer):
    """Rank r of 3 places exactly conversations r, r+3, ... in its first epoch; progress reaches 1.0 with it."""
    task, W = varied_task(40), 3
    for r in range(W):
        loader = ChatLoader(task, tiny_tokenizer, B=2, T=48, rank=r, world_size=W, buffer_size=5)
        placed = []
        while loader.progress < 1.0:
            assert loader.epoch == 1
            next(loader)
            placed += [index for layout in loader.layout for index, _ in layout]
        share = len(range(r, 40, W))
        assert sorted(placed[:share]) == list(range(r, 40, W))
        assert loader.progress == len(placed) / share and loader.epoch == 1 + len(placed) // share


def test_val_mixture_loads_from_fixtures():
    """The validation mixture is SmolTalk test + MMLU test + GSM8K test (all fixture rows here)."""
    assert len(val_mixture()) == 6 + 8 + 4


def test_schedules():
    """LR multiplier: flat, then linear to final_lr_frac over the warmdown; momentum 0.85 -> 0.95 over 300 steps."""
    assert progress_lr_multiplier(0.0, 0.5) == 1.0 and progress_lr_multiplier(0.5, 0.5) == 1.0
    assert progress_lr_multiplier(0.75, 0.5) == pytest.approx(0.5) and progress_lr_multiplier(1.0, 0.5) == 0.0
    assert progress_lr_multiplier(0.9, 0.2, final_lr_frac=0.1) == pytest.approx(0.55)
    assert progress_lr_multiplier(2.0, 0.5) == 0.0 and progress_lr_multiplier(0.99, 0.0) == 1.0
    assert finetune_momentum(0) == 0.85 and finetune_momentum(150) == pytest.approx(0.90)
    assert finetune_momentum(300) == pytest.approx(0.95) and finetune_momentum(1000) == pytest.approx(0.95)


def tiny_model(vocab_size, seed=1):
    """2 layers, 64 wide, with large random matrices and no x0 shortcut, so that the logits at a position depend on
    the context before it, not only on the token there (the trained-from-init model would not)."""
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=256, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wte" not in name and "value_embeds" not in name:
                p.normal_(0.0, 3.0 / p.size(1) ** 0.5)
        model.x0_lambdas.zero_()
    return model.eval()


def test_load_optimizer_moments_keeps_this_runs_hyperparameters():
    """The previous stage's moments are loaded; this run's LRs, initial LRs and weight decay are kept."""
    model = tiny_model(256)
    previous = model.setup_optimizer(matrix_lr=0.05, weight_decay=0.2)
    model(torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))).backward()
    previous.step()
    model.zero_grad(set_to_none=True)
    current = model.setup_optimizer(matrix_lr=0.01, weight_decay=0.0)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in current.param_groups]
    load_optimizer_moments(current, previous.state_dict())
    assert [{k: v for k, v in g.items() if k != "params"} for g in current.param_groups] == settings
    for p in model.parameters():
        for key, value in previous.state[p].items():
            assert (
                torch.equal(current.state[p][key], value) if torch.is_tensor(value) else current.state[p][key] == value
            )


def test_rollout_batch_trains_only_on_sampled_tokens():
    """Targets are the sampled tokens only (not prompt, not forced tool output), right-padded with BOS / -1."""
    sequences = [[0, 5, 6, 7, 8, 9], [0, 5, 6, 3]]
    masks = [[0, 0, 1, 0, 1, 1], [0, 0, 0, 1]]
    inputs, targets = rollout_batch(sequences, masks, bos=0)
    assert inputs.tolist() == [[0, 5, 6, 7, 8], [0, 5, 6, 0, 0]]
    assert targets.tolist() == [[-1, 6, -1, 8, 9], [-1, -1, 3, -1, -1]]


def test_policy_gradient_matches_a_token_by_token_reference():
    """Padded, batched policy-gradient backward == grad of -sum(adv * log p(sampled token)) / N, one token at a time."""
    model = tiny_model(64)
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in (9, 5, 12)]
    masks = [[0, 0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0] * 4 + [1, 1, 0, 1, 1, 1, 1, 1]]  # prompt / tool = 0
    advantages = [0.5, -0.25, 1.0]
    num_sampled = sum(sum(mask[1:]) for mask in masks)
    loss = policy_gradient_backward(model, sequences, masks, advantages, batch_size=2, bos=0, scale=1 / num_sampled)
    batched = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    reference = 0.0
    for seq, mask, adv in zip(sequences, masks, advantages):
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0], dim=-1)  # (L, V)
        for t in range(1, len(seq)):
            if mask[t]:
                reference = reference - adv * logp[t - 1, seq[t]]
    (reference / num_sampled).backward()
    assert loss == pytest.approx(reference.item() / num_sampled, rel=1e-4)
    for name, p in model.named_parameters():
        assert torch.allclose(batched[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_batched_letter_predictions_equal_one_at_a_time(tiny_tokenizer):
    """Right padding does not change a prompt's answer: batched predictions equal one-problem forwards."""
    from tasks.arc import ARC
    from tasks.mmlu import MMLU

    model = tiny_model(tiny_tokenizer.get_vocab_size())
    conversations = [MMLU("all", "test")[i] for i in range(5)] + [ARC("ARC-Easy", "test")[i] for i in range(3)]
    batched = predict_letters(model, tiny_tokenizer, conversations)
    single = [predict_letters(model, tiny_tokenizer, [c])[0] for c in conversations]
    assert batched == single
    assert all(letter in c["letters"] for letter, c in zip(batched, conversations))
    assert len(set(batched)) > 1, "the answers should depend on the prompt (else the comparison proves little)"


def test_generative_outcomes_and_pass_at_k(tiny_tokenizer):
    """Per-sample outcomes from the engine; pass@k counts problems with any pass in the first k samples."""
    task = ListTask([chat(f"say {i}", str(i)) for i in range(5)])
    task.evaluate = lambda conversation, completion: len(completion) % 2 == 0  # a deterministic stand-in grader
    model = tiny_model(tiny_tokenizer.get_vocab_size())
    outcomes, n = generative_outcomes(
        model, tiny_tokenizer, task, num_samples=3, max_new_tokens=3, temperature=1.0, batch_size=6, max_problems=3
    )
    assert n == 3 and len(outcomes) == 3 and all(len(o) == 3 for o in outcomes)
    expected = [sum(any(o[:k]) for o in outcomes) / 3 for k in (1, 2, 3)]
    assert [pass_at_k(outcomes, n, k, "cpu") for k in (1, 2, 3)] == expected
    assert expected == sorted(expected)


def test_chatcore_is_mean_centered_accuracy():
    """Centered accuracy subtracts the random baseline (0.25 for 4-choice, 0 for generative) and rescales."""
    assert centered("MMLU", 0.25) == 0.0 and centered("ARC-Easy", 1.0) == 1.0 and centered("GSM8K", 0.3) == 0.3
    assert chatcore({"ARC-Challenge": 0.625, "HumanEval": 0.1}) == pytest.approx((0.5 + 0.1) / 2)
