"""
Pretrain a base model. `--depth` alone sets the model and the whole recipe through nanochat/dial.py (width, heads,
batch, learning rates, weight decay, horizon, schedules); the derived table is printed at start.

CPU (embedded sample data, small tokenizer; val bpb 3.27 -> 2.04 in 120 steps, 9-17 min on a shared 2-core VM):
    python -m scripts.tok_train --vocab-size 4096 --max-chars 20000000
    python -m scripts.base_train --depth 4 --max-seq-len 256 --device-batch-size 8 --total-batch-size 2048 \
        --num-iterations 120 --window-pattern L --warmup-steps 10 --eval-every 40 --eval-tokens 16384 \
        --sample-every 120 --core-metric-every -1
One GPU:
    python -m scripts.base_train --depth 12
8 GPUs (same results as one GPU up to floating point: 8x less gradient accumulation, same data):
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth 24 --run d24
Resume the last checkpoint of a run (same world size, device batch and total batch):
    python -m scripts.base_train --depth 12 --save-every 500 --resume-from-step latest
FP8 matmuls (CUDA sm89+, compiled; evaluation and sampling run in bf16, see nanochat/fp8.py):
    python -m scripts.base_train --depth 20 --fp8

Data: every micro-batch of a step comes from its own slice of the data stream (PretrainLoader with
rank = micro-batch index, world_size = micro-batches per step), so the tokens a step trains on depend on the
total and device batch only, not on how many processes share the work.
"""

import argparse
import contextlib
import gc
import math
import os
import time

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # less fragmentation (nanochat.md 12.5)

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import (
    find_last_step,
    gather_slice_states,
    get_rng_state,
    load_checkpoint,
    load_state_into,
    restore_slice_states,
    save_checkpoint,
    set_rng_state,
)
from nanochat.common import (
    autodetect_device_type,
    compute_cleanup,
    compute_init,
    describe_hardware,
    describe_throughput,
    format_seconds,
    get_base_dir,
    get_grad_accum_steps,
    get_mfu_peak,
    init_wandb,
    print0,
)
from nanochat.dataloader import PretrainLoader
from nanochat.dataset import DATASETS, SAMPLE_DATA_DIR, get_data_dir, list_parquet_files
from nanochat.dial import derive_hparams, format_hparams_table, lr_multiplier, muon_momentum, muon_weight_decay
from nanochat.fp8 import convert_to_fp8, fp8_disabled, fp8_unsupported_reason
from nanochat.gpt import CE_CHUNK_ROWS, GPT, GPTConfig, get_attention_backend
from nanochat.loss_eval import count_eval_steps, evaluate_bpb, round_robin
from nanochat.muon import describe_param_groups, set_group_hparams
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes, get_tokenizer

script_start = time.time()  # wall time of the run counts from here (imports excluded)

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Pretrain a base model; --depth sets everything else")
# runtime
parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy': no wandb)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
parser.add_argument("--seed", type=int, default=42, help="seed of the global generators (model init)")
parser.add_argument("--fp8", action="store_true", help="FP8 (tensorwise e4m3/e5m2) block and head matmuls, CUDA sm89+")
parser.add_argument(
    "--ce-chunk-rows", type=int, default=CE_CHUNK_ROWS, help="loss over chunks of this many tokens (0: unchunked)"
)
# model
parser.add_argument("--depth", type=int, default=20, help="number of transformer layers: the dial")
parser.add_argument("--aspect-ratio", type=int, default=64, help="model width per layer, in channels")
parser.add_argument("--head-dim", type=int, default=128, help="channels per attention head")
parser.add_argument("--max-seq-len", type=int, default=2048, help="context length, in tokens")
parser.add_argument("--window-pattern", type=str, default="SSSL", help="S = quarter context, L = full; last is L")
# horizon (first that is set wins)
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: from FLOPs or ratio)")
parser.add_argument("--target-flops", type=float, default=-1.0, help="training FLOPs budget (-1: from the ratio)")
parser.add_argument("--target-param-data-ratio", type=float, default=12, help="tokens per scaling parameter")
# batch
parser.add_argument("--device-batch-size", type=int, default=-1, help="rows per micro-step per process (-1: auto)")
parser.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1: dial)")
# optimizer (base values at d12 and a 2^19-token batch; the dial scales them)
parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon LR of the block matrices")
parser.add_argument("--embedding-lr", type=float, default=0.3, help="AdamW LR of wte (value embeds get half)")
parser.add_argument("--unembedding-lr", type=float, default=0.008, help="AdamW LR of lm_head")
parser.add_argument("--scalar-lr", type=float, default=0.5, help="AdamW LR of the per-layer scalars")
parser.add_argument("--weight-decay", type=float, default=0.28, help="Muon weight decay at d12, scaled by the dial")
parser.add_argument("--warmup-steps", type=int, default=40, help="linear LR warmup, in steps")
parser.add_argument("--warmdown-ratio", type=float, default=0.65, help="fraction of steps of linear LR warmdown")
parser.add_argument("--final-lr-frac", type=float, default=0.05, help="LR at the end, as a fraction of the peak")
# evaluation and checkpoints
parser.add_argument("--eval-every", type=int, default=250, help="val bpb every N steps (-1: only at the end)")
parser.add_argument("--eval-tokens", type=int, default=80 * 2**19, help="val tokens per val bpb evaluation")
parser.add_argument("--core-metric-every", type=int, default=2000, help="CORE every N steps and at the end (-1: off)")
parser.add_argument("--core-metric-max-per-task", type=int, default=500, help="examples per CORE task (-1: all)")
parser.add_argument("--sample-every", type=int, default=2000, help="greedy samples every N steps (-1: off)")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
parser.add_argument("--resume-from-step", type=str, default="", help="step to resume from, or 'latest'")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint directory name (default: d<depth>)")
args = parser.parse_args()
user_config = vars(args).copy()

# -----------------------------------------------------------------------------
# Compute init

assert args.dtype in ("", "bfloat16", "float32"), (
    f"--dtype must be bfloat16 or float32, got {args.dtype!r} (float16 would need a GradScaler, not implemented)"
)
if args.dtype:
    os.environ["NANOCHAT_DTYPE"] = args.dtype  # read by common.get_compute_dtype when the model is initialised
device_type = args.device_type or autodetect_device_type()
is_ddp, rank, local_rank, world_size, device = compute_init(device_type, seed=args.seed)
is_master = rank == 0
use_compile = args.compile if args.compile is not None else device_type == "cuda"
synchronize = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
peak_flops, peak_note = get_mfu_peak(device)
print0(f"device: {device_type} x {world_size} | compile: {use_compile} | MFU vs {peak_note}")

# -----------------------------------------------------------------------------
# Tokenizer

tokenizer = get_tokenizer()
token_bytes = get_token_bytes(device)
vocab_size = tokenizer.get_vocab_size()
print0(f"vocab size: {vocab_size:,}")

# -----------------------------------------------------------------------------
# The dial

h = derive_hparams(
    args.depth,
    vocab_size,
    args.max_seq_len,
    aspect_ratio=args.aspect_ratio,
    head_dim=args.head_dim,
    window_pattern=args.window_pattern,
    target_param_data_ratio=args.target_param_data_ratio,
    target_flops=args.target_flops,
    num_iterations=args.num_iterations,
    total_batch_size=args.total_batch_size,
    matrix_lr=args.matrix_lr,
    embedding_lr=args.embedding_lr,
    unembedding_lr=args.unembedding_lr,
    scalar_lr=args.scalar_lr,
    weight_decay_ref=args.weight_decay,
    warmup_steps=args.warmup_steps,
    warmdown_ratio=args.warmdown_ratio,
    final_lr_frac=args.final_lr_frac,
)
print0(format_hparams_table(h))
wandb_run = init_wandb(args.run, project="nanochat", config={**user_config, "hparams": h.to_dict()}, rank=rank)
num_iterations, total_batch_size, T = h.num_iterations, h.total_batch_size, h.sequence_len

# -----------------------------------------------------------------------------
# Model

with torch.device("meta"):
    orig_model = GPT(GPTConfig(**h.model_config))  # shapes only; memory comes with to_empty
orig_model.to_empty(device=device)
orig_model.init_weights()
assert args.ce_chunk_rows >= 0, f"--ce-chunk-rows must be >= 0 (0: unchunked), got {args.ce_chunk_rows}"
orig_model.ce_chunk_rows = args.ce_chunk_rows
num_fp8_layers = 0
if args.fp8:
    reason = fp8_unsupported_reason(device)
    assert reason is None, f"--fp8 cannot run here: {reason}"
    num_fp8_layers = len(convert_to_fp8(orig_model))  # the same Parameters: optimizer and checkpoints unchanged
    print0(f"fp8: {num_fp8_layers} linear layers run tensorwise-scaled FP8 in training (bf16 in eval and sampling)")
model = torch.compile(orig_model, dynamic=False) if use_compile else orig_model
# evaluation and sampling run the converted layers in the compute dtype: the numbers are those of the bf16 model
eval_precision = (lambda: fp8_disabled(orig_model)) if args.fp8 else contextlib.nullcontext


def fits_in_memory(B):
    """One eager forward + backward of B rows on random tokens; True if its peak plus optimizer state fits."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        x = torch.randint(0, vocab_size, (B, T), device=device)
        orig_model(x, x).backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    except torch.OutOfMemoryError:
        peak = math.inf
    finally:
        orig_model.zero_grad(set_to_none=True)
    # optimizer state not allocated yet: at most two fp32 moments per parameter (AdamW; Muon keeps fewer)
    optim_bytes = 8 * h.num_params
    total = torch.cuda.get_device_properties(device).total_memory
    return peak + optim_bytes <= 0.9 * total


assert total_batch_size % (T * world_size) == 0, (
    f"total batch {total_batch_size:,} tokens is not a whole number of rows of {T} tokens on {world_size} processes"
)
rows_per_process = total_batch_size // (T * world_size)  # rows per process per optimizer step
if args.device_batch_size > 0:
    device_batch_size = args.device_batch_size
else:
    # Largest power of two that divides the rows per process and fits; eager probing is conservative (compiled
    # graphs need less activation memory), so a hand-set --device-batch-size can sometimes go one step higher.
    candidates = [2**i for i in range(8, -1, -1) if rows_per_process % 2**i == 0]
    if device_type == "cuda":
        device_batch_size = next((B for B in candidates if fits_in_memory(B)), None)
        assert device_batch_size is not None, "even 1 row per micro-step does not fit in GPU memory"
        if is_ddp:  # every process must use the same micro-batch
            b = torch.tensor(device_batch_size, device=device)
            dist.all_reduce(b, op=dist.ReduceOp.MIN)
            device_batch_size = int(b)
        how = "largest that fits (probed)"
    else:
        device_batch_size = next(B for B in candidates if B * T <= max(4096, T))  # small: ~4k tokens per micro-step
        how = "CPU default, ~4k tokens"
    print0(f"device batch size: {device_batch_size} rows ({how})")
grad_accum_steps = get_grad_accum_steps(total_batch_size, device_batch_size, T, world_size)
num_slices = grad_accum_steps * world_size  # micro-batches per optimizer step, all processes together

# -----------------------------------------------------------------------------
# Optimizer

optimizer = orig_model.setup_optimizer(
    matrix_lr=h.matrix_lr,
    embedding_lr=h.embedding_lr,
    unembedding_lr=h.unembedding_lr,
    scalar_lr=h.scalar_lr,
    weight_decay=h.weight_decay,
    batch_lr_scale=h.batch_lr_scale,
)

# -----------------------------------------------------------------------------
# Data: micro-batch slice j of num_slices reads its own part of the stream (row groups j, j + S, ... of each file).
# Process `rank` owns slices rank * grad_accum_steps + k, k = 0..grad_accum_steps-1, so a step trains on the same
# tokens with 1 process x 8 accumulation steps as with 8 processes x 1, and val bpb sees the same tokens too.


def build_loaders(split):
    return [
        PretrainLoader(
            tokenizer, device_batch_size, T, split, device, rank=rank * grad_accum_steps + k, world_size=num_slices
        )
        for k in range(grad_accum_steps)
    ]


train_loaders = build_loaders("train")
eval_steps = count_eval_steps(args.eval_tokens, device_batch_size, T, grad_accum_steps, num_slices)  # per process

# what the checkpoint meta records of the data (the loaders read get_data_dir(): last file = validation)
data_dir = get_data_dir()
data_files = [os.path.basename(p) for p in list_parquet_files(data_dir)]
if os.path.abspath(data_dir) == os.path.abspath(SAMPLE_DATA_DIR):
    dataset_name = "embedded sample of real English text (nanochat/data/sample_shards)"
else:
    folder = os.path.basename(os.path.normpath(data_dir))
    dataset_name = next((name for name, (_, _, sub) in DATASETS.items() if sub == folder), f"parquet folder {folder}")
data_info = {"dataset": dataset_name, "data_dir": data_dir, "train_files": data_files[:-1], "val_file": data_files[-1]}

# -----------------------------------------------------------------------------
# Checkpoints and resume

model_tag = args.model_tag or f"d{args.depth}"
checkpoint_dir = os.path.join(get_base_dir(), "base_checkpoints", model_tag)
start_step = 0
# loop state: everything besides model, optimizer, data and RNG that a resumed run must continue
smooth_train_loss = 0.0  # EMA of the train loss (debiased when printed)
total_training_time = 0.0  # seconds of timed steps, earlier runs of a resumed training included
wall_time_before = 0.0  # wall seconds of the earlier processes of a resumed run, up to their checkpoint
timed_steps, timed_time = 0, 0.0  # timed steps and their seconds in this process
metrics = {"train_loss": [], "val_bpb": [], "core": []}  # train_loss per step; [step, value] pairs otherwise
core_results = None
resume_step = None
if args.resume_from_step:
    resume_step = find_last_step(checkpoint_dir) if args.resume_from_step == "latest" else int(args.resume_from_step)
    model_state, optim_state, meta = load_checkpoint(
        checkpoint_dir, resume_step, device, load_optimizer=True, rank=rank
    )
    saved = (meta["world_size"], meta["device_batch_size"], meta["total_batch_size"], meta["model_config"])
    mine = (world_size, device_batch_size, total_batch_size, h.model_config)
    assert saved == mine, f"checkpoint has (world_size, device batch, total batch, model) = {saved}, run has {mine}"
    load_state_into(orig_model, model_state)
    optimizer.load_state_dict(optim_state)
    restore_slice_states(train_loaders, meta["dataloader_state"], rank)
    loop = meta["loop_state"]
    smooth_train_loss, total_training_time = loop["smooth_train_loss"], loop["total_training_time"]
    metrics, core_results = meta["metrics"], meta.get("core_results")
    wall_time_before = meta.get("run_info", {}).get("wall_time_s", 0.0)  # checkpoints from before run_info: 0
    start_step = resume_step
    del model_state, optim_state
    print0(f"resumed from {checkpoint_dir} step {resume_step}")


def save(step, rng_state, first_loader_state):
    # loader 0 has already prefetched the first batch of this step: save its state from before that batch
    slice_states = gather_slice_states([first_loader_state] + [loader.state_dict() for loader in train_loaders[1:]])
    meta = {
        "model_config": h.model_config,
        "user_config": user_config,
        "hparams": h.to_dict(),
        "world_size": world_size,
        "device_batch_size": device_batch_size,
        "max_seq_len": T,
        "total_batch_size": total_batch_size,
        "grad_accum_steps": grad_accum_steps,
        "dataloader_state": slice_states,
        "loop_state": {"smooth_train_loss": smooth_train_loss, "total_training_time": total_training_time},
        "rng_state": rng_state,
        "val_bpb": metrics["val_bpb"][-1][1] if metrics["val_bpb"] else None,
        "metrics": metrics,
        "core_results": core_results,
        "data": data_info,
        "tokens_seen": step * total_batch_size,
        "optimizer": describe_param_groups(
            optimizer, scheduled={"adamw": ("lr",), "muon": ("lr", "momentum", "weight_decay")}
        ),
        "run_info": run_info(),
    }
    save_checkpoint(checkpoint_dir, step, orig_model.state_dict(), optimizer.state_dict(), meta, rank=rank)


def run_info():
    """
    What is known of the run so far: hardware, kernels, wall time, peak memory, and mean tok/s and MFU % over this
    process's timed steps (None before the first one, or with no known peak).
    """
    return {
        **describe_hardware(device, world_size, orig_model.compute_dtype),
        "attention": get_attention_backend(device, orig_model.compute_dtype),
        "fp8_layers": num_fp8_layers,
        "ce_chunk_rows": orig_model.ce_chunk_rows,
        "wall_time_s": wall_time_before + time.time() - script_start,
        **describe_throughput(
            total_batch_size * timed_steps, timed_time, h.flops_per_token, peak_flops, world_size, peak_note
        ),
    }


# -----------------------------------------------------------------------------
# Schedules: pure functions of the step (nanochat/dial.py), so a resumed run picks them up exactly


def set_hyperparameters(step):
    lrm = lr_multiplier(step, num_iterations, h.warmup_steps, h.warmdown_ratio, h.final_lr_frac)
    momentum = muon_momentum(step, num_iterations, h.warmdown_ratio, h.momentum_warmup_steps)
    weight_decay = muon_weight_decay(step, num_iterations, h.weight_decay)
    set_group_hparams(optimizer, lrm, momentum, weight_decay)
    return lrm


SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
]

# -----------------------------------------------------------------------------
# Training loop: num_iterations + 1 passes; the last one only evaluates and saves

if resume_step is not None:
    set_rng_state(meta["rng_state"])
flops_per_step = h.flops_per_token * total_batch_size
timing_skip = 10 if use_compile else 1  # compile and warm-up steps stay out of the timings
ema_beta = 0.9
first_loader_state = train_loaders[0].state_dict()
next_batch = next(train_loaders[0])  # prefetched: each batch is read while the device works on the previous one
step = start_step
while True:
    last_step = step == num_iterations

    # val bpb
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        model.eval()
        # val loaders are rebuilt every time: val bpb is always measured on the same leading tokens of the val split
        with eval_precision():
            val_bpb = evaluate_bpb(model, round_robin(build_loaders("val")), eval_steps, token_bytes)
        model.train()
        if not metrics["val_bpb"] or metrics["val_bpb"][-1][0] != step:  # a resumed run re-evaluates its first step
            metrics["val_bpb"].append([step, val_bpb])
        print0(f"step {step:05d} | val bpb {val_bpb:.6f}")
        wandb_run.log({"step": step, "total_training_flops": flops_per_step * step, "val/bpb": val_bpb})

    # CORE
    if args.core_metric_every > 0 and (last_step or (step > 0 and step % args.core_metric_every == 0)):
        from nanochat.core_eval import evaluate_core  # imported when used: it pulls in the eval bundle machinery

        orig_model.eval()
        with eval_precision():
            core_results = evaluate_core(orig_model, tokenizer, device, max_per_task=args.core_metric_max_per_task)
        orig_model.train()
        if not metrics["core"] or metrics["core"][-1][0] != step:
            metrics["core"].append([step, core_results["core"]])
        print0(f"step {step:05d} | CORE {core_results['core']:.4f}")
        wandb_run.log({"step": step, "core_metric": core_results["core"]})

    # samples (rank 0 only, from the uncompiled model: generate() runs variable-length forwards)
    if is_master and args.sample_every > 0 and (last_step or (step > 0 and step % args.sample_every == 0)):
        orig_model.eval()
        with eval_precision():
            for prompt in SAMPLE_PROMPTS:
                ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
                out = list(orig_model.generate(ids, max_tokens=16, temperature=0))
                print0(f"sample: {tokenizer.decode(ids[1:] + out)!r}")
        orig_model.train()

    # checkpoint
    periodic = args.save_every > 0 and step % args.save_every == 0 and step > 0 and step != resume_step
    if last_step or periodic:
        save(step, get_rng_state(), first_loader_state)
    if last_step:
        break

    # one optimizer step
    synchronize()
    t0 = time.perf_counter()
    lrm = set_hyperparameters(step)
    train_loss = torch.zeros((), device=device)
    for k in range(grad_accum_steps):
        x, y = next_batch
        loss = model(x, y)
        train_loss += loss.detach()
        (loss / grad_accum_steps).backward()  # gradients of the mean over micro-steps; MuonAdamW averages ranks
        next_k = (k + 1) % grad_accum_steps
        if next_k == 0:
            first_loader_state = train_loaders[0].state_dict()
        next_batch = next(train_loaders[next_k])
    optimizer.step()
    model.zero_grad(set_to_none=True)
    if is_ddp:
        dist.all_reduce(train_loss)  # SUM (gloo has no AVG): the logged loss is the mean over the whole batch
    train_loss = train_loss.item() / num_slices
    synchronize()
    dt = time.perf_counter() - t0

    # bookkeeping and the log line
    metrics["train_loss"].append(train_loss)
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss
    debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
    if step - start_step >= timing_skip:
        total_training_time += dt
        timed_time += dt
        timed_steps += 1
    tok_per_sec = total_batch_size / dt
    mfu = 100 * flops_per_step / dt / (peak_flops * world_size) if peak_flops else float("nan")
    steps_left = num_iterations - step - 1
    eta_str = format_seconds(steps_left * timed_time / timed_steps) if timed_steps else "?"
    print0(
        f"step {step:05d}/{num_iterations:05d} ({100 * (step + 1) / num_iterations:5.1f}%) | "
        f"loss {debiased_loss:.6f} | lrm {lrm:.3f} | dt {dt * 1000:.1f}ms | tok/s {tok_per_sec:,.0f} | "
        f"mfu {mfu:.2f}% | flops {flops_per_step * (step + 1):.3e} | "
        f"elapsed {format_seconds(total_training_time)} | eta {eta_str}"
    )
    if step % 100 == 0:
        wandb_run.log(
            {
                "step": step,
                "total_training_flops": flops_per_step * (step + 1),
                "total_training_time": total_training_time,
                "train/loss": debiased_loss,
                "train/lrm": lrm,
                "train/dt": dt,
                "train/tok_per_sec": tok_per_sec,
                "train/mfu": mfu,
                "train/epoch": train_loaders[0].epoch,
            }
        )

    # Python's GC walks every live object; after the first step they are all long-lived: freeze them and collect
    # by hand (nanochat saw ~500 ms pauses otherwise)
    if step == start_step:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif step % 5000 == 0:
        gc.collect()
    step += 1

# -----------------------------------------------------------------------------
# Summary

final_run_info = run_info()
peak_memory, wall_time = final_run_info["peak_memory"], final_run_info["wall_time_s"]
min_val_bpb = min((v for _, v in metrics["val_bpb"]), default=float("nan"))
print0(f"peak memory: {peak_memory}")
print0(
    f"training time: {format_seconds(total_training_time)} over {timed_steps} timed steps | "
    f"wall time: {format_seconds(wall_time)}"
)
tok_per_sec, mfu = final_run_info["mean_tok_per_sec"] or 0, final_run_info["mfu_percent"] or 0
print0(f"mean tok/s: {tok_per_sec:,.0f} | MFU {mfu:.2f}% | min val bpb: {min_val_bpb:.6f}")
get_report().log(
    section="Base model training",
    data=[
        user_config,
        {
            "depth": h.depth,
            "parameters": h.num_params,
            "scaling parameters": h.num_scaling_params,
            "FLOPs per token": f"{h.flops_per_token:e}",
            "iterations": num_iterations,
            "total batch (tokens)": total_batch_size,
            "training tokens": h.train_tokens,
            "tokens : scaling params": h.train_tokens / h.num_scaling_params,
            "training FLOPs": f"{h.train_flops:e}",
            "device batch x accumulation x processes": f"{device_batch_size} x {grad_accum_steps} x {world_size}",
            "ran on": (
                f"{world_size} x {final_run_info['device_name']} ({final_run_info['device_type']}), "
                f"{final_run_info['dtype']}, attention {final_run_info['attention']}, compile {use_compile}, "
                f"FP8 layers {final_run_info['fp8_layers']}"
            ),
        },
        {
            "min val bpb": min_val_bpb,
            "final val bpb": metrics["val_bpb"][-1][1] if metrics["val_bpb"] else None,
            "CORE": core_results["core"] if core_results else None,
            "mean tok/s": final_run_info["mean_tok_per_sec"],
            "MFU %": final_run_info["mfu_percent"],
            "MFU basis": peak_note,
            "training time (s)": total_training_time,
            "wall time (s)": wall_time,
            "peak memory": peak_memory,
        },
        # CORE per task (centered accuracy) of the last CORE eval, when it ran
        {f"CORE {label}": r["centered"] for label, r in (core_results or {}).get("results", {}).items()},
    ],
)

# -----------------------------------------------------------------------------
# Cleanup

wandb_run.finish()
compute_cleanup()
