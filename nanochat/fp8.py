"""
Optional FP8 training of the large matmuls (`--fp8`; CUDA sm89+, e.g. H100): a tensorwise-scaled linear layer.

- Forward: the input and the weight are each scaled by one dynamic factor, fp8_max / amax(|tensor|), saturated to
  the format's range and cast to e4m3 (3 mantissa bits, max 448); `torch._scaled_mm` multiplies them with fast
  accumulation and writes the output in the activation dtype (bf16).
- Backward: the output gradient goes to e5m2 (2 mantissa bits, max 57344: gradients need range more than
  precision); two more `_scaled_mm` (without fast accumulation) give the input gradient (bf16) and the weight
  gradient (fp32, the master weight's dtype). The e4m3 input and weight saved in forward are reused: half the
  activation memory of bf16 for these layers.
- Scales stay on the device (no host syncs) and are recomputed every call ("tensorwise dynamic" in torchao terms).
- The math is one autograd.Function that dynamo traces (forward and backward), so torch.compile fuses the amax,
  scale and cast work around the GEMMs. Eager FP8 is slower than bf16: use it only compiled (nanochat's log says
  the same).

`convert_to_fp8(model)` swaps every eligible nn.Linear (both dims divisible by 16, the smaller one >= min_dim) for a
Float8Linear holding the very same weight Parameter, so optimizer groups, state dict keys, checkpoints and
GPT.estimate_flops() (which counts parameters, not module classes) are unchanged. The value-embedding gates
(12 -> n_kv_head) stay in bf16. `fp8_disabled(model)` runs the layers in the compute dtype inside it (evaluation,
sampling): the same function as the unconverted model, bit for bit.

On CPU (no FP8 GEMM in hardware) `scaled_mm` falls back to `emulated_scaled_mm`: the fp8 values upcast exactly to
fp32 and multiplied there. It is slow and exists so that the tests check the quantization math on any machine.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn  # forward operands
E5M2 = torch.float8_e5m2  # output gradients
AMAX_EPS = 1e-12  # amax floor: an all-zero tensor (zero-initialized projections) gets a finite scale
FP8_DIM_MULTIPLE = 16  # _scaled_mm needs every GEMM dimension divisible by 16


# -----------------------------------------------------------------------------
# Quantization


def compute_scale(x, fp8_dtype):
    """Quantization scale fp8_max / amax(|x|) as a 0-D fp32 tensor on x's device (never read on the host)."""
    amax = x.abs().max().float().clamp(min=AMAX_EPS)
    return torch.finfo(fp8_dtype).max / amax


def to_fp8(x, scale, fp8_dtype):
    """x * scale, saturated to the finite range, cast. A plain cast turns e5m2 overflow into inf; with a fresh amax
    scale only rounding can overflow, with a stale or hand-set one anything can."""
    fp8_max = torch.finfo(fp8_dtype).max
    return (x.float() * scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)


def emulated_scaled_mm(a, b, a_scale, b_scale, out_dtype):
    """The slow reference of scaled_mm: fp8 values upcast exactly, fp32 GEMM, then divided by both scales."""
    return ((a.float() @ b.float()) / (a_scale * b_scale)).to(out_dtype)


def scaled_mm(a, b, a_scale, b_scale, out_dtype, fast_accum):
    """
    (a / a_scale) @ (b / b_scale) for fp8 a (M, K) row-major and b (K, N) column-major (cuBLASLt's layout rule),
    a_scale/b_scale the quantization scales of compute_scale. torch._scaled_mm on CUDA, the emulation elsewhere.
    """
    if not a.is_cuda:
        return emulated_scaled_mm(a, b, a_scale, b_scale, out_dtype)
    return torch._scaled_mm(
        a, b, scale_a=a_scale.reciprocal(), scale_b=b_scale.reciprocal(), out_dtype=out_dtype, use_fast_accum=fast_accum
    )


def column_major(x):
    """The same (rows, cols) matrix stored column by column (a transposed copy, transposed back as a view)."""
    return x.t().contiguous().t()


# -----------------------------------------------------------------------------
# The layer


class Fp8Matmul(torch.autograd.Function):
    """y = x @ weight.T with x and weight in e4m3 and the output gradient in e5m2, one dynamic scale per tensor."""

    @staticmethod
    def forward(ctx, x, weight):
        x2 = x.reshape(-1, x.size(-1))  # (M, K) with M = all leading dims
        x_scale, w_scale = compute_scale(x2, E4M3), compute_scale(weight, E4M3)
        x_fp8, w_fp8 = to_fp8(x2, x_scale, E4M3), to_fp8(weight, w_scale, E4M3)
        y = scaled_mm(x_fp8, w_fp8.t(), x_scale, w_scale, x.dtype, fast_accum=True)  # (M, N); w_fp8.t() is col-major
        ctx.save_for_backward(x_fp8, w_fp8, x_scale, w_scale)
        ctx.weight_dtype = weight.dtype
        return y.view(*x.shape[:-1], y.size(-1))

    @staticmethod
    def backward(ctx, grad_y):
        x_fp8, w_fp8, x_scale, w_scale = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.size(-1))  # (M, N)
        g_scale = compute_scale(g, E5M2)
        g_fp8 = to_fp8(g, g_scale, E5M2)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = scaled_mm(g_fp8, column_major(w_fp8), g_scale, w_scale, grad_y.dtype, fast_accum=False)  # (M, K)
            grad_x = grad_x.view(*grad_y.shape[:-1], grad_x.size(-1))
        if ctx.needs_input_grad[1]:
            assert g.size(0) % FP8_DIM_MULTIPLE == 0, (  # M is the inner dim of this GEMM
                f"FP8 weight gradients need the token count ({g.size(0)}) divisible by {FP8_DIM_MULTIPLE}"
            )
            grad_w = scaled_mm(  # (N, M) @ (M, K) -> (N, K), accumulated and returned in fp32
                g_fp8.t().contiguous(), column_major(x_fp8), g_scale, x_scale, torch.float32, fast_accum=False
            ).to(ctx.weight_dtype)
        return grad_x, grad_w


class Float8Linear(nn.Module):
    """A bias-free linear computed by Fp8Matmul; `weight` is the converted layer's own Parameter object."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.fp8_enabled = True  # fp8_disabled() turns this off around evaluation

    def forward(self, x):
        if self.fp8_enabled:
            return Fp8Matmul.apply(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))  # exactly gpt.Linear's forward

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8_enabled={self.fp8_enabled}"


# -----------------------------------------------------------------------------
# Model-level helpers


def is_fp8_eligible(linear, min_dim=128):
    """Bias-free, both dims divisible by 16 (GEMM rule), the smaller >= min_dim (small GEMMs gain nothing)."""
    out_features, in_features = linear.weight.shape
    return (
        linear.bias is None
        and out_features % FP8_DIM_MULTIPLE == 0
        and in_features % FP8_DIM_MULTIPLE == 0
        and min(out_features, in_features) >= min_dim
    )


def convert_to_fp8(model, min_dim=128):
    """Swap every eligible nn.Linear of the model for a Float8Linear in place; returns the converted module names."""
    converted = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and is_fp8_eligible(child, min_dim):
                setattr(parent, name, Float8Linear(child))
                converted.append(f"{parent_name}.{name}" if parent_name else name)
    return converted


@contextlib.contextmanager
def fp8_disabled(model):
    """Inside, every Float8Linear of the model (compiled wrapper or not) runs in the compute dtype."""
    layers = [m for m in model.modules() if isinstance(m, Float8Linear)]
    previous = [m.fp8_enabled for m in layers]
    for m in layers:
        m.fp8_enabled = False
    try:
        yield
    finally:
        for m, enabled in zip(layers, previous):
            m.fp8_enabled = enabled


def fp8_unsupported_reason(device):
    """None when FP8 GEMMs run on this device, else why not (for a loud assert in the training scripts)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 training needs a CUDA GPU, device is {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 GEMMs need compute capability 8.9+ (Ada, Hopper), this GPU is sm{major}{minor}"
    return None
