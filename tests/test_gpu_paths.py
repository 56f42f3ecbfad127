"""
GPU-only paths against their CPU-tested references: bf16 vs fp32, FlashAttention-3 vs SDPA, torch.compile vs eager
(model and optimizer kernels), the chunked loss's memory, FP8 vs its emulation and vs bf16 training, CUDA loader
batches vs CPU ones, and a training step with no host sync. Every test skips without CUDA.

On the device: python -m pytest -q tests/test_gpu_paths.py
"""

import math

import pytest
import torch

from nanochat import fp8, gpt, muon
from nanochat.gpt import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# head_dim 64, GQA 4:2; with min_dim 128 every matrix but the value-embedding gates is FP8-eligible
CONFIG = {"sequence_len": 128, "vocab_size": 500, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 256}


@pytest.fixture(autouse=True)
def _sdpa_by_default(monkeypatch):
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "sdpa")


def is_hopper_with_fa3():
    return torch.cuda.get_device_capability()[0] == 9 and gpt._import_fa3() is not None


def build_model(monkeypatch, dtype, state_dict=None, **overrides):
    """A GPT on CUDA computing in `dtype`, with random (not zero-initialized) matrices, or the given weights."""
    monkeypatch.setenv("NANOCHAT_DTYPE", dtype)
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**CONFIG, **overrides}))
    model.to_empty(device="cuda")
    torch.manual_seed(0)
    model.init_weights()
    if state_dict is None:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2 and "embed" not in name and "wte" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.size(1)))
    else:
        model.load_state_dict(state_dict)
    return model


def make_batch(B=4, T=128, vocab=500, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T + 1), generator=g).cuda()
    return idx[:, :-1], idx[:, 1:]


def loss_and_flat_grad(model, x, y, forward=None):
    model.zero_grad(set_to_none=True)
    loss = (model if forward is None else forward)(x, y)
    loss.backward()
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return loss.item(), grad


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -----------------------------------------------------------------------------
# precision, attention kernel, compile


def test_bf16_forward_backward_matches_fp32(monkeypatch):
    """The bf16 model (weights cast in each linear, bf16 embeddings) gives the fp32 loss and gradients to bf16
    accuracy."""
    ref = build_model(monkeypatch, "float32")
    low = build_model(monkeypatch, "bfloat16", state_dict=ref.state_dict())
    assert low.compute_dtype == torch.bfloat16 and low.wte.weight.dtype == torch.bfloat16
    x, y = make_batch()
    ref_loss, ref_grad = loss_and_flat_grad(ref, x, y)
    loss, grad = loss_and_flat_grad(low, x, y)
    assert math.isfinite(loss) and abs(loss - ref_loss) < 1e-2 * ref_loss
    assert relative_error(grad, ref_grad) < 5e-2


@pytest.mark.skipif(not torch.cuda.is_available() or not is_hopper_with_fa3(), reason="needs Hopper and FA3")
def test_fa3_model_matches_sdpa_model(monkeypatch):
    """The whole model (GQA, a 31-token sliding window and a full layer) trains the same on FA3 as on SDPA."""
    model = build_model(monkeypatch, "bfloat16")
    model.window_sizes = [31, 128]
    x, y = make_batch()
    sdpa_loss, sdpa_grad = loss_and_flat_grad(model, x, y)
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "fa3")
    fa3_loss, fa3_grad = loss_and_flat_grad(model, x, y)
    assert abs(fa3_loss - sdpa_loss) < 1e-2 * sdpa_loss
    assert relative_error(fa3_grad, sdpa_grad) < 3e-2


def test_compiled_chunked_model_matches_eager(monkeypatch):
    """torch.compile of the model (chunked loss in 3 ragged chunks) gives the eager unchunked loss and gradients,
    and three MuonAdamW steps follow the same loss curve."""
    model = build_model(monkeypatch, "bfloat16")
    x, y = make_batch()
    model.ce_chunk_rows = 0
    eager_loss, eager_grad = loss_and_flat_grad(model, x, y)
    model.ce_chunk_rows = 200  # 512 rows -> 200 + 200 + 112
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False)
    loss, grad = loss_and_flat_grad(model, x, y, forward=compiled)
    assert abs(loss - eager_loss) < 5e-3 * eager_loss
    assert relative_error(grad, eager_grad) < 3e-2

    def curve(forward, model):
        optimizer = model.setup_optimizer()
        losses = []
        for _ in range(3):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.2
            loss = forward(x, y)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled_curve = curve(compiled, model)
    model.load_state_dict(state)
    eager_curve = curve(model, model)
    torch._dynamo.reset()
    assert eager_curve[-1] < eager_curve[0]
    assert max(abs(a - b) for a, b in zip(compiled_curve, eager_curve)) < 2e-2 * eager_curve[0]


def test_compiled_optimizer_kernels_match_eager():
    """The compiled Muon and AdamW kernels (hyperparameters as 0-D CPU tensors) equal the eager functions (Python
    floats), and a changed learning rate does not recompile."""
    torch.manual_seed(0)
    hp = muon._hyperparameter_caster(torch.device("cuda"))
    K, m, n = 3, 128, 64
    params, grads = torch.randn(K, m, n, device="cuda"), torch.randn(K, m, n, device="cuda")
    for ortho_dtype in (torch.float32, torch.bfloat16):
        results = []
        for fn, cast in ((muon.muon_update, float), (muon._get_kernel(muon.muon_update, params.device), hp)):
            p, mom, second = params.clone(), torch.zeros(K, m, n, device="cuda"), torch.zeros(K, m, 1, device="cuda")
            fn(grads.clone(), p, mom, second, cast(0.95), cast(0.02), cast(0.1), cast(0.9), ortho_dtype)
            results.append((p, mom, second))
        tol = 1e-4 if ortho_dtype == torch.float32 else 1e-3  # 1e-4: TF32 may be on (compute_init)
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    for p_dtype in (torch.float32, torch.bfloat16):  # bf16: the embedding tables
        p0 = torch.randn(256, 64, device="cuda").to(p_dtype)
        g = torch.randn(256, 64, device="cuda").to(p_dtype)
        results = []
        for fn, cast in ((muon.adamw_update, float), (muon._get_kernel(muon.adamw_update, p0.device), hp)):
            p, m1, m2 = p0.clone(), torch.zeros(256, 64, device="cuda"), torch.zeros(256, 64, device="cuda")
            fn(p, g, m1, m2, cast(1), cast(0.01), cast(0.8), cast(0.95), cast(1e-10), cast(0.01))
            results.append((p.float(), m1, m2))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    kernel = torch.compile(muon.adamw_update, backend=counter, dynamic=False, fullgraph=True)
    p, m1, m2 = (
        torch.randn(64, 64, device="cuda"),
        torch.zeros(64, 64, device="cuda"),
        torch.zeros(64, 64, device="cuda"),
    )
    for step, lr in ((1, 0.01), (2, 0.005), (3, 0.0001)):
        kernel(p, torch.randn_like(p), m1, m2, hp(step), hp(lr), hp(0.8), hp(0.95), hp(1e-10), hp(0.0))
    assert counter.frame_count == 1


def test_chunked_loss_lowers_peak_memory(monkeypatch):
    """With V = 32768 and 8192 rows, the chunked head's peak memory is well under the unchunked one (whose fp32
    logits alone are 1 GiB)."""
    model = build_model(monkeypatch, "bfloat16", n_layer=1, n_head=2, n_kv_head=2, n_embd=128, vocab_size=32768,
                        sequence_len=2048)  # fmt: skip
    x, y = make_batch(B=4, T=2048, vocab=32768)

    def peak(chunk_rows):
        model.ce_chunk_rows = chunk_rows
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model(x, y).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    unchunked, chunked = peak(0), peak(1024)
    assert unchunked > 2**30 and chunked < 0.4 * unchunked, (unchunked, chunked)


def test_training_step_has_no_host_sync(monkeypatch):
    """A compiled training step (forward, chunked loss, backward, MuonAdamW step) runs under
    torch.cuda.set_sync_debug_mode('error'): nothing waits for the GPU."""
    model = build_model(monkeypatch, "bfloat16")
    model.ce_chunk_rows = 200
    optimizer = model.setup_optimizer()
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False)
    x, y = make_batch()

    def step():
        loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(2):  # compile, optimizer state, allocator warm-up
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(2)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch._dynamo.reset()
    assert all(math.isfinite(v.item()) for v in losses)


# -----------------------------------------------------------------------------
# FP8


needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs CUDA on an sm89+ GPU"
)


@needs_fp8
def test_fp8_cuda_matmul_matches_emulation():
    """torch._scaled_mm (layouts, reciprocal scales, fast accumulation) computes what the CPU emulation computes:
    output, input gradient and weight gradient."""
    torch.manual_seed(0)
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 256, device="cuda") / 16
    g = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    outs = []
    for device in ("cuda", "cpu"):
        xd, wd = x.to(device).requires_grad_(), w.to(device).requires_grad_()
        y = fp8.Fp8Matmul.apply(xd, wd)
        y.backward(g.to(device))
        assert y.dtype == torch.bfloat16 and xd.grad.dtype == torch.bfloat16 and wd.grad.dtype == torch.float32
        outs.append([t.detach().cpu() for t in (y, xd.grad, wd.grad)])
    for cuda_t, cpu_t in zip(*outs):
        assert relative_error(cuda_t, cpu_t) < 1e-2


@needs_fp8
def test_fp8_training_close_to_bf16(monkeypatch):
    """Ten compiled MuonAdamW steps with FP8 linears (chunked loss included) follow the bf16 loss curve; under
    fp8_disabled the converted model equals the bf16 one exactly; FLOPs/token are unchanged."""
    ref = build_model(monkeypatch, "bfloat16")
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    x, y = make_batch()

    def curve(model):
        forward = torch.compile(model, dynamic=False)
        optimizer = model.setup_optimizer()
        losses = []
        for _ in range(10):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.2
            loss = forward(x, y)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    low = build_model(monkeypatch, "bfloat16", state_dict=state)
    ref.ce_chunk_rows = low.ce_chunk_rows = 128  # 512 rows in 4 chunks: the FP8 lm_head under checkpointing too
    flops = low.estimate_flops()
    assert len(fp8.convert_to_fp8(low)) == 2 * 6 + 1
    assert low.estimate_flops() == flops
    with torch.no_grad(), fp8.fp8_disabled(low):
        assert torch.equal(low(x, y), ref(x, y))
    torch._dynamo.reset()
    bf16_curve, fp8_curve = curve(ref), curve(low)
    torch._dynamo.reset()
    assert fp8_curve[-1] < fp8_curve[0] - 0.5, fp8_curve
    assert max(abs(a - b) for a, b in zip(bf16_curve, fp8_curve)) < 0.1, (bf16_curve, fp8_curve)


# -----------------------------------------------------------------------------
# data


def test_loader_cuda_batches_equal_cpu_batches(tiny_tokenizer, monkeypatch, tmp_path):
    """The CUDA loader (pinned buffer, non-blocking copy) yields the CPU loader's batches, and a batch stays
    intact while later batches reuse the pinned buffer."""
    from nanochat.dataloader import PretrainLoader

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    cpu_loader = PretrainLoader(tiny_tokenizer, 4, 64, "train", device="cpu", buffer_size=64)
    cuda_loader = PretrainLoader(tiny_tokenizer, 4, 64, "train", device="cuda", buffer_size=64)
    cpu_batches = [next(cpu_loader) for _ in range(6)]
    cuda_batches = [next(cuda_loader) for _ in range(6)]  # all held before any comparison
    torch.cuda.synchronize()
    for (cx, cy), (gx, gy) in zip(cpu_batches, cuda_batches):
        assert gx.is_cuda and gy.is_cuda and gx.dtype == gy.dtype == torch.int64
        assert torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy)
