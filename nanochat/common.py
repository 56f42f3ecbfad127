"""
Shared plumbing: base directory, device and dtype detection, process-group setup for 1 process or
torchrun, rank-0 printing, a null wandb logger, per-device peak FLOP/s for MFU, seeding, the split of a batch into
micro-steps, and the hardware (device, dtype, peak memory) and throughput (tok/s, MFU) parts of a checkpoint's
run_info.

Importing this module does no work; compute_init() does.
"""

import ctypes
import os
import platform
import random
import sys

import numpy as np
import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# Paths

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def get_base_dir():
    """Where tokenizers, checkpoints, shards and reports live: $NANOCHAT_BASE_DIR or ~/.cache/nanochat."""
    base_dir = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base_dir, exist_ok=True)
    return base_dir


# -----------------------------------------------------------------------------
# Distributed info and printing


def get_dist_info():
    """(is_ddp, rank, local_rank, world_size) read from the torchrun environment."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def is_rank0():
    return get_dist_info()[1] == 0


def print0(*args, **kwargs):
    """print() on rank 0 only, flushed, so that torchrun logs read like a single process."""
    if is_rank0():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


# -----------------------------------------------------------------------------
# Device and dtype


def autodetect_device_type():
    """cuda > mps > cpu, overridable with $NANOCHAT_DEVICE."""
    override = os.environ.get("NANOCHAT_DEVICE")
    if override:
        assert override in ("cuda", "mps", "cpu"), f"NANOCHAT_DEVICE must be cuda, mps or cpu, got {override!r}"
        return override
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def get_compute_dtype(device_type):
    """bf16 on CUDA GPUs that support it, fp32 elsewhere; $NANOCHAT_DTYPE (bfloat16|float16|float32) wins."""
    override = os.environ.get("NANOCHAT_DTYPE")
    if override:
        assert override in _DTYPES, f"NANOCHAT_DTYPE must be one of {sorted(_DTYPES)}, got {override!r}"
        return _DTYPES[override]
    if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        return torch.bfloat16
    return torch.float32


def tune_cpu_malloc():
    """
    On glibc, large tensors are mmapped and page-faulted again on every step; raising the mmap threshold
    and never trimming made CPU training steps 1.3-2.5x faster on our 2-core VM (measured, see env notes).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(1 << 30))
    libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    return True


# -----------------------------------------------------------------------------
# Seeding


def seed_everything(seed):
    """Seed python, numpy and torch global generators (sampling code should still use explicit generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# -----------------------------------------------------------------------------
# Process group


def compute_init(device_type=None, seed=42):
    """
    Set up one process, or one rank under torchrun (nccl on CUDA, gloo on CPU).
    Returns (is_ddp, rank, local_rank, world_size, device).
    """
    device_type = device_type or autodetect_device_type()
    assert device_type in ("cuda", "mps", "cpu"), f"unknown device type {device_type!r}"
    if device_type == "cuda":
        assert torch.cuda.is_available(), "device type cuda requested but torch.cuda.is_available() is False"
    if device_type == "mps":
        assert torch.backends.mps.is_available(), "device type mps requested but MPS is not available"

    seed_everything(seed)
    if device_type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # fp32 matmuls (rare: we compute in bf16) use TF32
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    if device_type == "cpu":
        tune_cpu_malloc()

    is_ddp, rank, local_rank, world_size = get_dist_info()
    if is_ddp:
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            device = torch.device(device_type)
            dist.init_process_group(backend="gloo")
        dist.barrier()
    else:
        device = torch.device(device_type)
    return is_ddp, rank, local_rank, world_size, device


def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# Logging


class DummyWandb:
    """Stands in for a wandb run when no --run is given or on ranks other than 0."""

    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass


def init_wandb(run_name, project, config, rank=0):
    """A real wandb run only when a run name is given (and not 'dummy') and on rank 0."""
    if not run_name or run_name == "dummy" or rank != 0:
        return DummyWandb()
    import wandb  # imported lazily: it is slow and most runs do not need it

    return wandb.init(project=project, name=run_name, config=config)


def format_seconds(s):
    """Elapsed time and ETAs in the step log line: '4m07s' under an hour, '2h05m' above."""
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -----------------------------------------------------------------------------
# Batch


def get_grad_accum_steps(total_batch_size, device_batch_size, T, world_size):
    """Micro-steps per optimizer step on each process (total batch in tokens, device batch in rows of T tokens)."""
    tokens_per_micro_step = device_batch_size * T * world_size
    assert total_batch_size % tokens_per_micro_step == 0, (
        f"total batch {total_batch_size:,} tokens is not a multiple of device batch {device_batch_size} rows x "
        f"{T} tokens x {world_size} processes = {tokens_per_micro_step:,} tokens: change --device-batch-size or "
        f"--total-batch-size"
    )
    grad_accum_steps = total_batch_size // tokens_per_micro_step
    print0(
        f"batch: {total_batch_size:,} tokens = {device_batch_size} rows x {T} tokens x {world_size} processes x "
        f"{grad_accum_steps} accumulation steps"
    )
    return grad_accum_steps


# -----------------------------------------------------------------------------
# Peak FLOP/s for MFU (dense bf16 tensor-core peaks from vendor datasheets; FP8 is 2x on Hopper/Blackwell)

PEAK_BF16_FLOPS = [
    # (substring of the device name, FLOP/s); first match wins, so specific names come first
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2.25e15),
    ("GB200", 2.5e15),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
    ("MI300X", 1307.4e12),
]


def get_peak_flops(device_name):
    """Dense bf16 peak FLOP/s for a device name; None when unknown (MFU is then not reported)."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def get_mfu_peak(device):
    """
    (peak FLOP/s per device, what that peak is) for MFU: the datasheet dense bf16 peak on CUDA (None when the GPU is
    not in PEAK_BF16_FLOPS), a measured GEMM rate elsewhere.
    """
    device = torch.device(device)
    if device.type == "cuda":
        peak_flops = get_peak_flops(get_device_name(device))
        peak_note = f"{get_device_name(device)} dense bf16 peak"
        if not peak_flops:
            peak_note = f"no MFU: {get_device_name(device)} has no peak FLOP/s entry in nanochat/common.py"
    else:
        # CPUs have no datasheet peak our kernels can approach: MFU is relative to a measured GEMM rate
        peak_flops = estimate_cpu_peak_flops()
        peak_note = f"measured fp32 2048^2 GEMM rate on this CPU ({peak_flops / 1e9:.0f} GFLOP/s), not a datasheet peak"
    return peak_flops, peak_note


def get_device_name(device):
    """GPU name on CUDA; on CPU the model name from /proc/cpuinfo (Linux), else what `platform` reports."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return read_cpu_model_name() or platform.processor() or platform.machine() or "cpu"


def read_cpu_model_name(cpuinfo_path="/proc/cpuinfo"):
    """The first 'model name' line of /proc/cpuinfo (x86), or its 'Hardware'/'Model' line (ARM); None if absent."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for key in ("model name", "Hardware", "Model"):
        for line in lines:
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return None


def get_peak_memory(device):
    """This process's peak memory so far, as printed and stored in checkpoint metadata."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA max allocated)"
    import resource  # Unix only; imported here so that the module imports everywhere

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU max RSS)"  # KiB on Linux


def describe_hardware(device, world_size, dtype):
    """The machine part of a checkpoint's `run_info`: device name, count and type, compute dtype, peak memory."""
    device = torch.device(device)
    return {
        "device_name": get_device_name(device),
        "device_count": world_size,
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_memory": get_peak_memory(device),
    }


def describe_throughput(tokens, seconds, flops_per_token, peak_flops, world_size, peak_note):
    """
    The throughput part of a checkpoint's `run_info`: mean tok/s over `seconds` of timed steps that processed
    `tokens` (all processes), and the MFU % it gives against `peak_flops` per device; None before the first timed
    step, or (MFU) with no known peak.
    """
    tok_per_sec = tokens / seconds if seconds > 0 else None
    mfu = 100 * tok_per_sec * flops_per_token / (peak_flops * world_size) if tok_per_sec and peak_flops else None
    return {"mean_tok_per_sec": tok_per_sec, "mfu_percent": mfu, "mfu_basis": peak_note}


def estimate_cpu_peak_flops():
    """
    A measured stand-in for CPU 'peak': the best of 3 timings of a 2048^2 fp32 GEMM on all threads (a big square GEMM
    is about the best a CPU does; our smaller matmuls get less). CPUs have no datasheet peak our kernels approach, so
    CPU MFU is relative to this, and it moves with whatever else the machine is running.
    """
    import time

    n = 2048
    gen = torch.Generator().manual_seed(0)  # a private generator: measuring must not shift the model's init
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
