"""Tests of nanochat/fp8.py on CPU through the fp32 emulation of the FP8 GEMM: scales, rounding, saturation, the
forward/backward math, conversion of a GPT (shared weights, unchanged FLOP accounting), eval in high precision."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nanochat import fp8, gpt
from nanochat.fp8 import E4M3, E5M2, Float8Linear, Fp8Matmul, compute_scale, convert_to_fp8, fp8_disabled, to_fp8
from nanochat.gpt import GPT, GPTConfig

VOCAB = 97
# worst relative rounding error of a normal number: half a unit in the last place, 2^-(mantissa bits + 1)
HALF_ULP = {E4M3: 2**-4, E5M2: 2**-3}
# half the spacing of the subnormals (absolute, in the scaled domain): 2^(min normal exponent - mantissa bits - 1)
SUBNORMAL_HALF_STEP = {E4M3: 2**-10, E5M2: 2**-17}


@pytest.fixture(autouse=True)
def _sdpa_backend(monkeypatch):
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "sdpa")


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_model(seed=0):
    """Tiny fp32 GPT with random matrices (the real init zeroes the output projections)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(1)))
    return model


# -----------------------------------------------------------------------------
# quantization


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_compute_scale_maps_amax_to_fp8_max(fp8_dtype):
    """The scale is fp8_max / amax as a 0-D fp32 tensor on the input's device; all-zero input gets a finite one."""
    x = torch.randn(64, 32, dtype=torch.bfloat16)
    x[3, 5] = -7.5  # the amax is negative: |x| counts
    scale = compute_scale(x, fp8_dtype)
    assert scale.shape == () and scale.dtype == torch.float32 and scale.device == x.device
    assert scale.item() == pytest.approx(torch.finfo(fp8_dtype).max / 7.5, rel=1e-7)
    zero_scale = compute_scale(torch.zeros(16, 16), fp8_dtype)
    assert math.isfinite(zero_scale.item()) and zero_scale.item() > 0
    assert (to_fp8(torch.zeros(16, 16), zero_scale, fp8_dtype).float() == 0).all()


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_to_fp8_rounds_to_nearest_and_uses_the_whole_range(fp8_dtype):
    """Quantized values sit within half an ulp of x * scale (relative for normals, absolute for subnormals), and
    the amax lands exactly on the largest finite value."""
    torch.manual_seed(0)
    x = torch.randn(4096) * torch.logspace(-4, 1, 4096)  # many magnitudes, subnormals included
    scale = compute_scale(x, fp8_dtype)
    q = to_fp8(x, scale, fp8_dtype).float()
    scaled = x * scale
    bound = torch.maximum(HALF_ULP[fp8_dtype] * scaled.abs(), torch.tensor(SUBNORMAL_HALF_STEP[fp8_dtype]))
    assert ((q - scaled).abs() <= bound * (1 + 1e-6)).all()
    assert q.abs().max().item() == torch.finfo(fp8_dtype).max


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_to_fp8_saturates_instead_of_overflowing(fp8_dtype):
    """With a stale (too large) scale, overflowing values clamp to +-fp8_max: no inf or NaN."""
    fp8_max = torch.finfo(fp8_dtype).max
    x = torch.tensor([1.0, -1.0, 0.5, 1e-3, 3e30])
    q = to_fp8(x, torch.tensor(2 * fp8_max), fp8_dtype).float()
    assert torch.isfinite(q).all()
    assert q[0] == fp8_max and q[1] == -fp8_max and q[4] == fp8_max
    assert q[2] == fp8_max and q[3] == pytest.approx(2e-3 * fp8_max, rel=HALF_ULP[fp8_dtype])


def test_emulated_scaled_mm_matches_torch_scaled_mm():
    """The emulation computes what torch._scaled_mm computes (checked where torch has an FP8 GEMM on CPU)."""
    torch.manual_seed(0)
    a, b = torch.randn(32, 64), torch.randn(48, 64)
    a_scale, b_scale = compute_scale(a, E4M3), compute_scale(b, E5M2)
    a8, b8 = to_fp8(a, a_scale, E4M3), to_fp8(b, b_scale, E5M2)
    try:
        ref = torch._scaled_mm(
            a8, b8.t(), scale_a=a_scale.reciprocal(), scale_b=b_scale.reciprocal(), out_dtype=torch.float32
        )
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._scaled_mm has no CPU FP8 kernel in this build: {e}")
    out = fp8.emulated_scaled_mm(a8, b8.t(), a_scale, b_scale, torch.float32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# the layer's math


def dequantize(x, fp8_dtype):
    scale = compute_scale(x, fp8_dtype)
    return to_fp8(x, scale, fp8_dtype).float() / scale


def test_fp8_matmul_is_quantize_then_matmul():
    """Forward is deq(e4m3 x) @ deq(e4m3 w).T; backward uses deq(e5m2 grad): grad_x = g w, grad_w = g.T x."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64, requires_grad=True)  # leading dims are flattened to M = 32 tokens
    w = torch.randn(48, 64, requires_grad=True)
    g = torch.randn(2, 16, 48)
    y = Fp8Matmul.apply(x, w)
    y.backward(g)
    x2 = x.detach().view(-1, 64)
    xq, wq, gq = dequantize(x2, E4M3), dequantize(w.detach(), E4M3), dequantize(g.view(-1, 48), E5M2)
    assert y.shape == (2, 16, 48) and y.dtype == x.dtype and w.grad.dtype == w.dtype
    torch.testing.assert_close(y.detach().view(-1, 48), xq @ wq.t(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.view(-1, 64), gq @ wq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, gq.t() @ xq, atol=1e-5, rtol=1e-5)


def test_fp8_linear_within_fp8_error_of_fp32():
    """Output and gradients of Float8Linear stay within FP8 rounding of the fp32 linear (and are not identical)."""
    torch.manual_seed(0)
    x = torch.randn(4, 32, 128)
    w = torch.randn(256, 128) / math.sqrt(128)
    g = torch.randn(4, 32, 256)
    x8, w8 = x.clone().requires_grad_(), torch.nn.Parameter(w.clone())
    layer = Float8Linear(torch.nn.Linear(128, 256, bias=False))
    layer.weight = w8
    y8 = layer(x8)
    y8.backward(g)
    x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
    y32 = F.linear(x32, w32)
    y32.backward(g)
    # a product of two e4m3-rounded operands: each rounding is <= 2^-4 relative, ~2^-4/sqrt(3) rms for uniform
    # mantissas, and the errors of a dot product average out: ~0.035 relative in norm expected
    assert 1e-3 < relative_error(y8, y32) < 0.05
    # gradients add the e5m2 rounding of g (<= 2^-3, ~0.07 rms)
    assert 1e-3 < relative_error(x8.grad, x32.grad) < 0.1
    assert 1e-3 < relative_error(w8.grad, w32.grad) < 0.1


def test_token_count_not_multiple_of_16_fails_loudly():
    """FP8 weight gradients need M % 16 == 0 (M is that GEMM's inner dim): backward says so; forward runs."""
    layer = Float8Linear(torch.nn.Linear(64, 32, bias=False))
    y = layer(torch.randn(3, 7, 64))
    assert y.shape == (3, 7, 32)
    with pytest.raises(AssertionError, match="token count \\(21\\) divisible by 16"):
        y.sum().backward()


# -----------------------------------------------------------------------------
# a converted GPT


def test_convert_to_fp8_picks_eligible_linears_and_shares_weights():
    """Eligible linears (dims % 16, smaller dim >= min_dim) become Float8Linear with the same Parameter objects;
    the gates, too-small and odd-shaped linears stay; the state dict is unchanged."""
    model = make_model()
    before_params = [(n, id(p)) for n, p in model.named_parameters()]
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_to_fp8(model, min_dim=64)
    # C = 64, kv dim = 32 (c_k, c_v too small), MLP 256, padded vocab 128; the 12 -> 1 value-embedding gate never
    per_layer = ["attn.c_q", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert sorted(converted) == sorted([f"blocks.{i}.{name}" for i in range(2) for name in per_layer] + ["lm_head"])
    assert isinstance(model.blocks[1].attn.ve_gate, gpt.Linear) and isinstance(model.blocks[0].attn.c_k, gpt.Linear)
    assert [(n, id(p)) for n, p in model.named_parameters()] == before_params
    state = model.state_dict()
    assert state.keys() == before_state.keys()
    assert all(torch.equal(state[k], before_state[k]) for k in state)
    assert convert_to_fp8(make_model()) == []  # default min_dim 128: nothing in a 64-wide model
    assert not fp8.is_fp8_eligible(torch.nn.Linear(136, 200, bias=False), min_dim=128)  # 200 % 16 != 0


def test_estimate_flops_unchanged_by_fp8_conversion():
    """FLOPs/token and parameter counts are the same before and after conversion (counted by parameters, not
    by module class: nanochat's snapshot undercounted ~12x under --fp8), on the tiny model and on a d12."""
    model = make_model()
    flops, counts = model.estimate_flops(), model.num_scaling_params()
    convert_to_fp8(model, min_dim=64)
    assert model.estimate_flops() == flops and model.num_scaling_params() == counts
    with torch.device("meta"):
        d12 = GPT(GPTConfig(n_layer=12, n_head=6, n_kv_head=6, n_embd=768, sequence_len=2048, vocab_size=32768))
    flops, counts = d12.estimate_flops(), d12.num_scaling_params()
    assert len(convert_to_fp8(d12)) == 12 * 6 + 1  # q, k, v, attn proj, fc, mlp proj per layer, and lm_head
    assert d12.estimate_flops() == flops == 6 * 110_100_912 + 12 * 768 * (3 * 2048 + 9 * 512)
    assert d12.num_scaling_params() == counts


def test_fp8_model_loss_close_and_fp8_disabled_is_exact():
    """A converted model's loss is within FP8 error of the original; under fp8_disabled it is bit-identical, and
    FP8 comes back after the context."""
    model = make_model()
    idx = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_loss, ref_logits = model(idx[:, :-1], idx[:, 1:]), model(idx)
        convert_to_fp8(model, min_dim=64)
        fp8_loss = model(idx[:, :-1], idx[:, 1:])
        with fp8_disabled(model):
            assert torch.equal(model(idx), ref_logits)
            assert torch.equal(model(idx[:, :-1], idx[:, 1:]), ref_loss)
        assert all(m.fp8_enabled for m in model.modules() if isinstance(m, Float8Linear))
        assert torch.equal(model(idx[:, :-1], idx[:, 1:]), fp8_loss)
    assert fp8_loss != ref_loss and abs(fp8_loss.item() - ref_loss.item()) < 0.02 * ref_loss.item()


def test_fp8_training_tracks_fp32_training():
    """Six MuonAdamW steps of the converted model follow the fp32 loss curve within FP8 noise."""
    idx = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(2))

    def train(use_fp8):
        model = make_model()
        if use_fp8:
            convert_to_fp8(model, min_dim=64)
        optimizer = model.setup_optimizer()
        losses = []
        for _ in range(6):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.2  # stands in for warmup (see test_gpt)
            loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    ref, low = train(False), train(True)
    assert all(b < a for a, b in itertools.pairwise(low)), low
    assert max(abs(a - b) for a, b in zip(ref, low)) < 0.05, (ref, low)  # nats; measured 0.021 (5.03 -> 1.20)


def test_fp8_model_with_chunked_loss_traces_as_one_graph():
    """A converted model with the chunked (checkpointed) loss traces forward and backward with fullgraph=True, and
    the traced run equals eager bit for bit."""
    model = make_model()
    convert_to_fp8(model, min_dim=64)
    model.ce_chunk_rows = 32  # 4 chunks of 32 rows: the FP8 lm_head is recomputed inside each checkpoint
    idx = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(2))
    results = []
    torch._dynamo.reset()
    for forward in (model, torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)):
        model.zero_grad(set_to_none=True)
        loss = forward(idx[:, :-1], idx[:, 1:])
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    torch._dynamo.reset()
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_fp8_unsupported_reason():
    """FP8 is refused with a reason on CPU (and on CUDA GPUs older than sm89)."""
    assert "CUDA" in fp8.fp8_unsupported_reason(torch.device("cpu"))
    if torch.cuda.is_available():
        supported = torch.cuda.get_device_capability() >= (8, 9)
        assert (fp8.fp8_unsupported_reason(torch.device("cuda")) is None) == supported
