"""
Midtraining: continue training the base model on conversations, multiple choice (MMLU), math with the calculator
tool (GSM8K), identity conversations and spelling, packed by nanochat.chat_data.ChatLoader (padding instead of
cropping, loss on assistant tokens only). Weights come from the base checkpoint, the optimizer is fresh, with the
base run's learning rates (its dial hparams; flags override); one epoch of the mixture unless --num-iterations.

CPU (after base_train; the tiny task fixtures shipped in the repo):
    NANOCHAT_TASK_DIR=nanochat/data/tasks python -m scripts.mid_train --spellingbee-size 200 --eval-every 20 \
        --eval-tokens 16384
One GPU:
    python -m scripts.mid_train
8 GPUs (same data and results as one GPU up to floating point, like base_train):
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train -- --run mid
Resume the last checkpoint (same world size, device batch and total batch):
    python -m scripts.mid_train --save-every 100 --resume-from-step latest

Saves to <base>/mid_checkpoints/<tag>/ (tag: --model-tag, else the base model's tag).
"""

import argparse
import gc
import os
import time

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import torch
import torch.distributed as dist

from nanochat.chat_data import (
    IDENTITY_FILE,
    ChatLoader,
    describe_chat_data,
    epoch_progress,
    finetune_momentum,
    mid_train_mixture,
    progress_lr_multiplier,
    resolve_checkpoint,
    scale_initial_lrs,
    stage_optimizer_config,
    val_mixture,
)
from nanochat.checkpoint_manager import (
    PHASE_DIRS,
    find_last_step,
    gather_slice_states,
    get_rng_state,
    load_checkpoint,
    load_model,
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
    get_peak_memory,
    init_wandb,
    print0,
)
from nanochat.loss_eval import count_eval_steps, evaluate_bpb, round_robin
from nanochat.muon import describe_param_groups, set_group_hparams
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes

script_start = time.time()  # wall time of the run counts from here (imports excluded)

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Midtrain a base model on the conversation mixture")
# runtime
parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy': no wandb)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
parser.add_argument("--seed", type=int, default=42, help="seed of the global generators")
# source
parser.add_argument("--source-tag", type=str, default="", help="base model tag (default: the largest d<N>)")
parser.add_argument("--source-step", type=int, default=-1, help="base checkpoint step (-1: the last)")
# batch (-1: the base run's)
parser.add_argument("--max-seq-len", type=int, default=-1, help="row length in tokens (-1: the base run's)")
parser.add_argument("--device-batch-size", type=int, default=-1, help="rows per micro-step per process (-1: base's)")
parser.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1: base's)")
# optimizer (-1: the base run's base LRs; the base's sqrt-batch scale is applied, adjusted to this total batch)
parser.add_argument("--matrix-lr", type=float, default=-1.0, help="Muon LR of the block matrices (-1: base's)")
parser.add_argument("--embedding-lr", type=float, default=-1.0, help="AdamW LR of wte (-1: base's)")
parser.add_argument("--unembedding-lr", type=float, default=-1.0, help="AdamW LR of lm_head (-1: base's)")
parser.add_argument("--scalar-lr", type=float, default=-1.0, help="AdamW LR of the per-layer scalars (-1: base's)")
parser.add_argument("--init-lr-frac", type=float, default=1.0, help="all LRs times this")
parser.add_argument("--weight-decay", type=float, default=0.0, help="Muon weight decay (pretraining annealed it to 0)")
parser.add_argument("--warmdown-ratio", type=float, default=0.2, help="fraction of the run of linear LR warmdown")
parser.add_argument("--final-lr-frac", type=float, default=0.0, help="LR at the end, as a fraction of the peak")
# horizon and data
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: one epoch of the mixture)")
parser.add_argument("--identity-file", type=str, default=IDENTITY_FILE, help="JSONL of identity conversations")
parser.add_argument("--identity-epochs", type=int, default=2, help="times the identity conversations appear")
parser.add_argument("--spellingbee-size", type=int, default=80_000, help="synthetic SpellingBee conversations")
parser.add_argument("--buffer-size", type=int, default=100, help="rendered conversations buffered for packing")
# evaluation and checkpoints
parser.add_argument("--eval-every", type=int, default=150, help="val bpb every N steps (-1: only at the end)")
parser.add_argument("--eval-tokens", type=int, default=20 * 2**19, help="val tokens (padding included) per eval")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
parser.add_argument("--resume-from-step", type=str, default="", help="step to resume from, or 'latest'")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint directory name (default: the source tag)")
args = parser.parse_args()
user_config = vars(args).copy()

# -----------------------------------------------------------------------------
# Compute init

assert args.dtype in ("", "bfloat16", "float32"), f"--dtype must be bfloat16 or float32, got {args.dtype!r}"
if args.dtype:
    os.environ["NANOCHAT_DTYPE"] = args.dtype
device_type = args.device_type or autodetect_device_type()
is_ddp, rank, local_rank, world_size, device = compute_init(device_type, seed=args.seed)
use_compile = args.compile if args.compile is not None else device_type == "cuda"
synchronize = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
peak_flops, peak_note = get_mfu_peak(device)
print0(f"device: {device_type} x {world_size} | compile: {use_compile} | MFU vs {peak_note}")
wandb_run = init_wandb(args.run, project="nanochat-mid", config=user_config, rank=rank)

# -----------------------------------------------------------------------------
# Model and tokenizer: the base checkpoint

source_dir, source_tag, source_step = resolve_checkpoint("base", args.source_tag or None, args.source_step)
orig_model, tokenizer, source_meta = load_model("base", device, phase="train", model_tag=source_tag, step=source_step)
model = torch.compile(orig_model, dynamic=False) if use_compile else orig_model
token_bytes = get_token_bytes(device)
model_config = source_meta["model_config"]

# -----------------------------------------------------------------------------
# Batch

T = args.max_seq_len if args.max_seq_len > 0 else source_meta["max_seq_len"]
device_batch_size = args.device_batch_size if args.device_batch_size > 0 else source_meta["device_batch_size"]
total_batch_size = args.total_batch_size if args.total_batch_size > 0 else source_meta["total_batch_size"]
assert T <= model_config["sequence_len"], (
    f"rows of {T} tokens exceed the model's context {model_config['sequence_len']}"
)
grad_accum_steps = get_grad_accum_steps(total_batch_size, device_batch_size, T, world_size)
num_slices = grad_accum_steps * world_size  # micro-batches per optimizer step, all processes together

# -----------------------------------------------------------------------------
# Optimizer: fresh, with the base run's learning rates

# the base run's LRs unless a flag sets one; the dial's sqrt(batch) rule carried over to this stage's batch
optimizer_config = stage_optimizer_config(source_meta, vars(args), total_batch_size)
optimizer = orig_model.setup_optimizer(**optimizer_config, weight_decay=args.weight_decay)
scale_initial_lrs(optimizer, args.init_lr_frac)
print0(
    f"optimizer: {', '.join(f'{k} {v:g}' for k, v in optimizer_config.items())} | init_lr_frac {args.init_lr_frac} | "
    f"Muon weight decay {args.weight_decay}"
)

# -----------------------------------------------------------------------------
# Data: micro-batch slice j of num_slices walks conversations j, j + S, ... (as base_train: the data of a step
# does not depend on the number of processes)

train_task = mid_train_mixture(args.identity_file, args.identity_epochs, args.spellingbee_size)
val_task = val_mixture()
print0(f"train mixture: {len(train_task):,} conversations | val mixture: {len(val_task):,} conversations")
data_info = describe_chat_data(train_task, val_task)  # for the checkpoint meta and the model card


def build_loaders(task):
    return [
        ChatLoader(
            task, tokenizer, device_batch_size, T, device, rank * grad_accum_steps + k, num_slices, args.buffer_size
        )
        for k in range(grad_accum_steps)
    ]


train_loaders = build_loaders(train_task)
eval_steps = count_eval_steps(args.eval_tokens, device_batch_size, T, grad_accum_steps, num_slices)


# -----------------------------------------------------------------------------
# Checkpoints and resume

model_tag = args.model_tag or source_tag
checkpoint_dir = os.path.join(get_base_dir(), PHASE_DIRS["mid"], model_tag)
num_iterations = args.num_iterations
start_step = 0
smooth_train_loss, total_training_time = 0.0, 0.0
wall_time_before = 0.0  # wall seconds of the earlier processes of a resumed run, up to their checkpoint
metrics = {"train_loss": [], "val_bpb": []}
resume_step = None
if args.resume_from_step:
    resume_step = find_last_step(checkpoint_dir) if args.resume_from_step == "latest" else int(args.resume_from_step)
    model_state, optim_state, meta = load_checkpoint(
        checkpoint_dir, resume_step, device, load_optimizer=True, rank=rank
    )
    saved = (meta["world_size"], meta["device_batch_size"], meta["total_batch_size"], meta["model_config"])
    mine = (world_size, device_batch_size, total_batch_size, model_config)
    assert saved == mine, f"checkpoint has (world_size, device batch, total batch, model) = {saved}, run has {mine}"
    load_state_into(orig_model, model_state)
    optimizer.load_state_dict(optim_state)
    restore_slice_states(train_loaders, meta["dataloader_state"], rank)
    smooth_train_loss, total_training_time = (
        meta["loop_state"]["smooth_train_loss"],
        meta["loop_state"]["total_training_time"],
    )
    metrics = meta["metrics"]
    wall_time_before = meta.get("run_info", {}).get("wall_time_s", 0.0)  # checkpoints from before run_info: 0
    start_step = resume_step
    del model_state, optim_state
    print0(f"resumed from {checkpoint_dir} step {resume_step}")


def save(step):
    slice_states = gather_slice_states([loader.state_dict() for loader in train_loaders])
    meta = {
        "model_config": model_config,
        "user_config": user_config,
        "parent": {"source": "base", "model_tag": source_tag, "step": source_step},
        "optimizer_config": optimizer_config,
        "optimizer": describe_param_groups(optimizer, scheduled={"adamw": ("lr",), "muon": ("lr", "momentum")}),
        "data": data_info,
        "tokens_seen": step * total_batch_size,  # row tokens, padding included
        "num_iterations": num_iterations,
        "world_size": world_size,
        "device_batch_size": device_batch_size,
        "max_seq_len": T,
        "total_batch_size": total_batch_size,
        "grad_accum_steps": grad_accum_steps,
        "dataloader_state": slice_states,
        "loop_state": {"smooth_train_loss": smooth_train_loss, "total_training_time": total_training_time},
        "rng_state": get_rng_state(),
        "val_bpb": metrics["val_bpb"][-1][1] if metrics["val_bpb"] else None,
        "metrics": metrics,
        "run_info": run_info(),
    }
    save_checkpoint(checkpoint_dir, step, orig_model.state_dict(), optimizer.state_dict(), meta, rank=rank)


def run_info():
    """What is known of the run so far: hardware, wall time, peak memory, mean throughput of the timed steps."""
    return {
        **describe_hardware(device, world_size, orig_model.compute_dtype),
        "wall_time_s": wall_time_before + time.time() - script_start,
        # tok/s in row tokens (padding included)
        **describe_throughput(
            total_batch_size * timed_steps, timed_time, flops_per_token, peak_flops, world_size, peak_note
        ),
    }


# -----------------------------------------------------------------------------
# Schedules: functions of the progress (step / num_iterations, or the fraction of the epoch consumed)


def set_hyperparameters(step, progress):
    lrm = progress_lr_multiplier(progress, args.warmdown_ratio, args.final_lr_frac)
    set_group_hparams(optimizer, lrm, momentum=finetune_momentum(step))
    return lrm


# -----------------------------------------------------------------------------
# Training loop: until num_iterations steps or one epoch; the last pass only evaluates and saves

if resume_step is not None:
    set_rng_state(meta["rng_state"])
flops_per_token = orig_model.estimate_flops()
timing_skip = 10 if use_compile else 1
timed_steps, timed_time = 0, 0.0
ema_beta = 0.9
step = start_step
while True:
    progress = step / num_iterations if num_iterations > 0 else epoch_progress(train_loaders, device)
    last_step = step == num_iterations if num_iterations > 0 else progress >= 1.0

    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        model.eval()
        val_bpb = evaluate_bpb(model, round_robin(build_loaders(val_task)), eval_steps, token_bytes)
        model.train()
        if not metrics["val_bpb"] or metrics["val_bpb"][-1][0] != step:
            metrics["val_bpb"].append([step, val_bpb])
        print0(f"step {step:05d} | val bpb {val_bpb:.6f}")
        wandb_run.log({"step": step, "val/bpb": val_bpb})

    periodic = args.save_every > 0 and step % args.save_every == 0 and step > 0 and step != resume_step
    if last_step or periodic:
        save(step)
    if last_step:
        break

    synchronize()
    t0 = time.perf_counter()
    lrm = set_hyperparameters(step, progress)
    train_loss = torch.zeros((), device=device)
    num_targets = torch.zeros((), dtype=torch.int64, device=device)
    for k in range(grad_accum_steps):
        x, y = next(train_loaders[k])
        n = (y >= 0).sum()
        loss = model(x, y, loss_reduction="sum") / n.clamp(min=1)  # mean over assistant tokens (0 if none)
        train_loss += loss.detach()
        num_targets += n
        (loss / grad_accum_steps).backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    if is_ddp:
        dist.all_reduce(train_loss)
        dist.all_reduce(num_targets)
    train_loss = train_loss.item() / num_slices
    num_targets = num_targets.item()
    synchronize()
    dt = time.perf_counter() - t0

    metrics["train_loss"].append(train_loss)
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss
    debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
    if step - start_step >= timing_skip:
        total_training_time += dt
        timed_time += dt
        timed_steps += 1
    tok_per_sec = total_batch_size / dt
    mfu = 100 * flops_per_token * tok_per_sec / (peak_flops * world_size) if peak_flops else float("nan")
    if num_iterations > 0:
        step_str, done = f"{step:05d}/{num_iterations:05d}", (step + 1) / num_iterations
    else:  # one epoch: this process's progress stands in for the all-processes maximum (no collective to print)
        step_str, done = f"{step:05d}", max(max(loader.progress for loader in train_loaders), 1e-9)
    steps_left = (step + 1) * (1 - done) / done
    eta = format_seconds(steps_left * timed_time / timed_steps) if timed_steps else "?"
    print0(
        f"step {step_str} ({100 * done:5.1f}%) | loss {debiased_loss:.6f} | lrm {lrm:.3f} | dt {dt * 1000:.1f}ms | "
        f"tok/s {tok_per_sec:,.0f} | assistant tokens {num_targets:,} | mfu {mfu:.2f}% | "
        f"epoch {train_loaders[0].epoch} | elapsed {format_seconds(total_training_time)} | eta {eta}"
    )
    if step % 10 == 0:
        wandb_run.log({"step": step, "train/loss": debiased_loss, "train/lrm": lrm, "train/dt": dt, "train/mfu": mfu})

    if step == start_step:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif step % 5000 == 0:
        gc.collect()
    step += 1

# -----------------------------------------------------------------------------
# Summary

peak_memory = get_peak_memory(device)
min_val_bpb = min((v for _, v in metrics["val_bpb"]), default=float("nan"))
pad_fraction = sum(loader.pad_tokens for loader in train_loaders) / max(
    sum(loader.tokens for loader in train_loaders), 1
)
wall_time = wall_time_before + time.time() - script_start
print0(
    f"peak memory: {peak_memory} | training time: {format_seconds(total_training_time)} | "
    f"wall time: {format_seconds(wall_time)}"
)
print0(f"min val bpb: {min_val_bpb:.6f} | padding: {100 * pad_fraction:.1f}% of row tokens (this process)")
get_report().log(
    section="Midtraining",
    data=[
        user_config,
        {
            "source": f"base {source_tag} step {source_step}",
            "iterations": step,
            "epoch progress": epoch_progress(train_loaders, device),
            "train conversations": len(train_task),
            "total batch (tokens)": total_batch_size,
            "padding fraction": pad_fraction,
            "truncated conversations": sum(loader.truncated for loader in train_loaders),
        },
        {
            "min val bpb": min_val_bpb,
            "final val bpb": metrics["val_bpb"][-1][1] if metrics["val_bpb"] else None,
            "training time (s)": total_training_time,
            "wall time (s)": wall_time,
            "peak memory": peak_memory,
        },
    ],
)

# -----------------------------------------------------------------------------
# Cleanup

wandb_run.finish()
compute_cleanup()
