"""Tests of the training forward of nanochat/gpt.py: the chunked head + cross-entropy, and a sync-free single graph."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nanochat import gpt
from nanochat.gpt import GPT, GPTConfig

VOCAB = 97


@pytest.fixture(autouse=True)
def _sdpa_backend(monkeypatch):
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "sdpa")


def make_model(seed=0):
    """Tiny fp32 model with random (not zero/tiny-initialized) matrices so that every weight gets a gradient."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(1)))
    return model


def make_batch(B=4, T=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (B, T), generator=g)
    targets = torch.randint(0, VOCAB, (B, T), generator=g)
    targets[0, :5] = -1  # some ignored positions, also inside the first chunk
    targets[3, -7:] = -1
    return idx, targets


def loss_and_grads(model, idx, targets, reduction, chunk_rows, forward=None):
    """Loss and parameter gradients; `forward` (default: the model) may be a compiled wrapper of it."""
    model.ce_chunk_rows = chunk_rows
    model.zero_grad(set_to_none=True)
    loss = (model if forward is None else forward)(idx, targets, loss_reduction=reduction)
    # the gradients are kept at the scale of a mean loss so that 1e-6 is a meaningful absolute tolerance
    if reduction == "none":  # a per-token weighted objective, as RL uses it
        weights = torch.rand(loss.shape, generator=torch.Generator().manual_seed(2))
        (loss * weights).sum().div(loss.numel()).backward()
    else:
        (loss / (targets >= 0).sum() if reduction == "sum" else loss).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_rows", [16, 48, 127])
def test_chunked_loss_and_grads_equal_unchunked(reduction, chunk_rows):
    """Chunked head + CE (even and ragged chunks) gives the unchunked loss and every gradient to 1e-6."""
    model = make_model()
    idx, targets = make_batch()
    ref_loss, ref_grads = loss_and_grads(model, idx, targets, reduction, chunk_rows=0)
    loss, grads = loss_and_grads(model, idx, targets, reduction, chunk_rows=chunk_rows)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-6, msg=name)
    if reduction == "none":
        assert loss.shape == (4, 32) and (loss[targets == -1] == 0).all()


def test_unchunked_loss_equals_plain_cross_entropy():
    """The loss is F.cross_entropy (ignore_index -1, mean over the kept targets) of the softcapped logits."""
    model = make_model()
    idx, targets = make_batch()
    with torch.no_grad():
        logits = model(idx)
        ref = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), ignore_index=-1)
        for chunk_rows in (0, 40):
            model.ce_chunk_rows = chunk_rows
            torch.testing.assert_close(model(idx, targets), ref, atol=1e-6, rtol=1e-6)


def test_chunked_loss_keeps_no_full_logits_for_backward():
    """With chunks, no (B*T, V) logits-shaped tensor is saved for backward (the unchunked path saves several)."""
    model = make_model()
    idx, targets = make_batch()

    def saved_logits(chunk_rows):
        model.ce_chunk_rows = chunk_rows
        found = []

        def pack(t):  # checkpointed chunks save through their own hooks: only what lives outside them shows here
            if t.dim() >= 2 and t.size(-1) in (VOCAB, model.padded_vocab_size) and t.numel() >= idx.numel() * VOCAB:
                found.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(idx, targets)
        return found

    assert len(saved_logits(0)) >= 2
    assert saved_logits(32) == []


SYNC_OPS = frozenset(
    {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.equal"}
)


class HostReadRecorder(TorchDispatchMode):
    """Records the ops that read device values on the host (each is a sync on CUDA): .item(), bool(), int(),
    nonzero and boolean-mask indexing (data-dependent output shapes)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        bool_index = name == "aten.index" and any(t is not None and t.dtype == torch.bool for t in args[1])
        if name in SYNC_OPS or bool_index:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def test_training_step_reads_nothing_on_the_host():
    """A training step (forward with windows, chunked loss and ignored targets; backward; MuonAdamW step) never
    reads a tensor value on the host."""
    model = make_model()
    model.window_sizes = [7, 31]  # a sliding-window layer (dense mask path) and a causal one
    model.ce_chunk_rows = 48
    optimizer = model.setup_optimizer()
    idx, targets = make_batch()
    for step in range(2):  # the first step also creates the optimizer state
        with HostReadRecorder() as recorder:
            model(idx, targets).backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
        assert recorder.found == [], f"step {step}"
    with HostReadRecorder() as recorder:  # the recorder itself sees host reads
        x = torch.randn(8)
        x.max().item(), x[x > 0]
    assert recorder.found == ["aten._local_scalar_dense", "aten.index"]


def test_training_forward_is_one_graph():
    """Forward (chunked loss) and backward trace with fullgraph=True (no Python branch on tensor data, no graph
    break), and the traced run equals eager."""
    model = make_model()
    idx, targets = make_batch()
    ref_loss, ref_grads = loss_and_grads(model, idx, targets, "mean", chunk_rows=48)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    loss, grads = loss_and_grads(model, idx, targets, "mean", chunk_rows=48, forward=compiled)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-6, msg=name)
    torch._dynamo.reset()
