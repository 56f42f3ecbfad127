"""
Training throughput per depth: for each depth, a randomly initialised model from the dial, a few warm-up steps, then
timed steps (forward + backward + optimizer) on random tokens. Prints tok/s, MFU, peak memory and ms/step.

CPU (fp32, eager):
    python -m scripts.bench_train --depths 2,4,6 --seq-len 256 --vocab-size 8192
One GPU (bf16, torch.compile; the issue's target is MFU >= 50% at d20 on one H100):
    python -m scripts.bench_train --depths 4,8,12,20
The kernels base_train can choose, one at a time (FP8 needs CUDA sm89+; the chunked loss trades one more lm_head
forward for memory; SDPA instead of FlashAttention-3 on Hopper):
    python -m scripts.bench_train --depths 20 --fp8
    python -m scripts.bench_train --depths 20 --ce-chunk-rows 0
    python -m scripts.bench_train --depths 20 --attention sdpa

MFU is against the device's dense bf16 datasheet peak on CUDA and against a measured fp32 GEMM rate on CPU.
FLOPs per token are GPT.estimate_flops() (6 x matmul params + attention), the same count base_train uses.
"""

import argparse
import os
import resource
import time

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import torch

from nanochat import gpt
from nanochat.common import (
    autodetect_device_type,
    compute_init,
    estimate_cpu_peak_flops,
    get_device_name,
    get_peak_flops,
    print0,
)
from nanochat.dial import derive_hparams
from nanochat.fp8 import convert_to_fp8, fp8_unsupported_reason
from nanochat.gpt import GPT, GPTConfig

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Training throughput, MFU and peak memory per depth")
parser.add_argument("--depths", type=str, default="4,8,12", help="comma-separated depths")
parser.add_argument("--seq-len", type=int, default=2048, help="sequence length, in tokens")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocab size, in tokens")
parser.add_argument("--window-pattern", type=str, default="SSSL", help="S = quarter context, L = full")
parser.add_argument(
    "--device-batch-size", type=int, default=-1, help="rows per step (-1: by depth on CUDA, 4k tok CPU)"
)
parser.add_argument("--steps", type=int, default=10, help="timed steps per depth")
parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (compile, allocator, caches)")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (CUDA: on)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--fp8", action="store_true", help="FP8 (tensorwise e4m3/e5m2) block and head matmuls, CUDA sm89+")
parser.add_argument(
    "--ce-chunk-rows", type=int, default=gpt.CE_CHUNK_ROWS, help="loss over chunks of this many tokens (0: unchunked)"
)
parser.add_argument(
    "--attention",
    type=str,
    default="auto",
    choices=["auto", "fa3", "sdpa"],
    help="attention kernel (auto: FA3 on Hopper)",
)
args = parser.parse_args()
assert args.ce_chunk_rows >= 0, f"--ce-chunk-rows must be >= 0 (0: unchunked), got {args.ce_chunk_rows}"
gpt.ATTENTION_BACKEND = None if args.attention == "auto" else args.attention  # read when the models are built

# -----------------------------------------------------------------------------
# Compute init

if args.dtype:
    os.environ["NANOCHAT_DTYPE"] = args.dtype
device_type = args.device_type or autodetect_device_type()
_, _, _, _, device = compute_init(device_type)
use_compile = args.compile if args.compile is not None else device_type == "cuda"
is_cuda = device_type == "cuda"
if is_cuda:
    peak_flops = get_peak_flops(get_device_name(device))
    peak_note = (
        f"{get_device_name(device)} dense bf16 peak {peak_flops / 1e12:.0f} TFLOP/s" if peak_flops else "unknown"
    )
else:
    peak_flops = estimate_cpu_peak_flops()
    peak_note = f"measured fp32 2048^2 GEMM rate {peak_flops / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)"
if args.fp8:
    reason = fp8_unsupported_reason(device)
    assert reason is None, f"--fp8 cannot run here: {reason}"
print0(f"device: {get_device_name(device)} | compile: {use_compile} | MFU vs {peak_note}")
print0(f"fp8: {args.fp8} | ce chunk rows: {args.ce_chunk_rows or 'off'} | attention: {args.attention}")


def synchronize():
    if is_cuda:
        torch.cuda.synchronize()


def default_batch_size(depth):
    """Rows per step: nanochat's guidance for 80 GB GPUs (nanochat.md 2.8), ~4k tokens on CPU."""
    if not is_cuda:
        return max(1, 4096 // args.seq_len)
    return 32 if depth <= 18 else 16 if depth <= 26 else 8


def bench(depth, B):
    """(tok/s, ms/step, peak memory bytes, params, FLOPs/token, compute dtype) for one depth at B rows per step."""
    h = derive_hparams(depth, args.vocab_size, args.seq_len, window_pattern=args.window_pattern)
    if use_compile:
        torch._dynamo.reset()  # a fresh compile cache per depth: no recompile limit, no graphs of the last model
    with torch.device("meta"):
        orig_model = GPT(GPTConfig(**h.model_config))
    orig_model.to_empty(device=device)
    orig_model.init_weights()
    orig_model.ce_chunk_rows = args.ce_chunk_rows
    if args.fp8:
        convert_to_fp8(orig_model)
    model = torch.compile(orig_model, dynamic=False) if use_compile else orig_model
    optimizer = orig_model.setup_optimizer(weight_decay=h.weight_decay, batch_lr_scale=h.batch_lr_scale)
    x = torch.randint(0, args.vocab_size, (B, args.seq_len), device=device)
    y = torch.randint(0, args.vocab_size, (B, args.seq_len), device=device)
    if is_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def train_step():
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup_steps):
        train_step()
    synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    if is_cuda:
        peak_memory = torch.cuda.max_memory_allocated()
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; process-wide peak
    return B * args.seq_len / dt, 1000 * dt, peak_memory, h.num_params, h.flops_per_token, orig_model.compute_dtype


# -----------------------------------------------------------------------------
# Benchmark loop

rows = []
for depth in [int(d) for d in args.depths.split(",")]:
    B = args.device_batch_size if args.device_batch_size > 0 else default_batch_size(depth)
    while True:
        try:
            tok_per_sec, ms, peak_memory, num_params, flops_per_token, compute_dtype = bench(depth, B)
            break
        except torch.OutOfMemoryError:
            assert B > 1, f"d{depth}: one row of {args.seq_len} tokens does not fit"
            print0(f"d{depth}: out of memory at {B} rows, trying {B // 2}")
            B //= 2
            torch.cuda.empty_cache()
    mfu = 100 * tok_per_sec * flops_per_token / peak_flops if peak_flops else float("nan")
    rows.append((depth, num_params, B, args.seq_len, tok_per_sec, mfu, peak_memory, ms))
    print0(f"d{depth}: {tok_per_sec:,.0f} tok/s | MFU {mfu:.1f}% | {ms:.1f} ms/step")
    if is_cuda:
        torch.cuda.empty_cache()

# -----------------------------------------------------------------------------
# Table

memory_kind = "CUDA max allocated" if is_cuda else "CPU max RSS of the process so far"
print0(
    f"\ncompute dtype {compute_dtype} | compile {use_compile} | fp8 {args.fp8} | ce chunk rows "
    f"{args.ce_chunk_rows or 'off'} | attention {args.attention} | peak memory = {memory_kind}"
)
header = f"{'depth':>5} {'params':>9} {'batch':>5} {'seq':>5} {'tok/s':>11} {'MFU %':>6} {'peak mem':>9} {'ms/step':>9}"
print0(header)
print0("-" * len(header))
for depth, num_params, B, T, tok_per_sec, mfu, peak_memory, ms in rows:
    print0(
        f"{depth:>5} {num_params / 1e6:>8.1f}M {B:>5} {T:>5} {tok_per_sec:>11,.0f} {mfu:>6.1f} "
        f"{peak_memory / 2**30:>7.2f}Gi {ms:>9.1f}"
    )
