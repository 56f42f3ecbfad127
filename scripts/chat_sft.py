"""
Supervised fine-tuning on the chat mixture (SmolTalk, MMLU and GSM8K for several epochs, identity conversations,
SpellingBee), packed by nanochat.chat_data.ChatLoader (padding instead of cropping, loss on assistant tokens only).
Warm-started from the midtrained model (or --source base), with the previous stage's optimizer state (momentum
buffers, Adam moments) when it was saved with the same number of processes, and this run's learning rates.
LR: constant, then linear to 0 over the last 50% of the run. Val bpb and the categorical chat evals (ARC, MMLU, the
functions scripts/chat_eval.py uses) run periodically; one epoch unless --num-iterations.

CPU (after mid_train; the tiny task fixtures shipped in the repo):
    NANOCHAT_TASK_DIR=nanochat/data/tasks python -m scripts.chat_sft --spellingbee-size 200 --eval-every 20 \
        --eval-tokens 16384 --chat-eval-every 20
One GPU:
    python -m scripts.chat_sft
8 GPUs:
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft -- --run sft
Resume the last checkpoint (same world size, device batch and total batch):
    python -m scripts.chat_sft --save-every 100 --resume-from-step latest

Saves to <base>/chatsft_checkpoints/<tag>/ (tag: --model-tag, else the source model's tag).
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
    centered,
    describe_chat_data,
    epoch_progress,
    finetune_momentum,
    load_optimizer_moments,
    progress_lr_multiplier,
    resolve_checkpoint,
    run_chat_eval,
    scale_initial_lrs,
    sft_train_mixture,
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
    optim_path,
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

CATEGORICAL_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU"]

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Supervised fine-tuning on the chat mixture")
# runtime
parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy': no wandb)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
parser.add_argument("--seed", type=int, default=42, help="seed of the global generators")
# source
parser.add_argument("--source", type=str, default="mid", choices=["mid", "base"], help="stage to start from")
parser.add_argument("--source-tag", type=str, default="", help="source model tag (default: the largest)")
parser.add_argument("--source-step", type=int, default=-1, help="source checkpoint step (-1: the last)")
parser.add_argument("--load-optimizer", type=int, default=1, help="1: start from the source's optimizer state")
# batch (-1: the source run's)
parser.add_argument("--max-seq-len", type=int, default=-1, help="row length in tokens (-1: the source's)")
parser.add_argument("--device-batch-size", type=int, default=-1, help="rows per micro-step per process (-1: source's)")
parser.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1: source's)")
# optimizer (-1: the source run's base LRs and batch scale, adjusted to this total batch)
parser.add_argument("--matrix-lr", type=float, default=-1.0, help="Muon LR of the block matrices (-1: source's)")
parser.add_argument("--embedding-lr", type=float, default=-1.0, help="AdamW LR of wte (-1: source's)")
parser.add_argument("--unembedding-lr", type=float, default=-1.0, help="AdamW LR of lm_head (-1: source's)")
parser.add_argument("--scalar-lr", type=float, default=-1.0, help="AdamW LR of the per-layer scalars (-1: source's)")
parser.add_argument("--init-lr-frac", type=float, default=0.8, help="all LRs times this")
parser.add_argument("--weight-decay", type=float, default=0.0, help="Muon weight decay")
parser.add_argument("--warmdown-ratio", type=float, default=0.5, help="fraction of the run of linear LR warmdown")
parser.add_argument("--final-lr-frac", type=float, default=0.0, help="LR at the end, as a fraction of the peak")
# horizon and data
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: one epoch of the mixture)")
parser.add_argument("--mmlu-epochs", type=int, default=3, help="times MMLU auxiliary_train appears")
parser.add_argument("--gsm8k-epochs", type=int, default=4, help="times GSM8K train appears")
parser.add_argument("--identity-file", type=str, default=IDENTITY_FILE, help="JSONL of identity conversations")
parser.add_argument("--identity-epochs", type=int, default=2, help="times the identity conversations appear")
parser.add_argument("--spellingbee-size", type=int, default=80_000, help="synthetic SpellingBee conversations")
parser.add_argument("--buffer-size", type=int, default=100, help="rendered conversations buffered for packing")
# evaluation and checkpoints
parser.add_argument("--eval-every", type=int, default=200, help="val bpb every N steps (-1: only at the end)")
parser.add_argument("--eval-tokens", type=int, default=40 * 2**19, help="val tokens (padding included) per eval")
parser.add_argument("--chat-eval-every", type=int, default=200, help="categorical chat evals every N steps and at end")
parser.add_argument("--chat-eval-max-problems", type=int, default=-1, help="problems per chat eval task (-1: all)")
parser.add_argument("--chat-eval-batch-size", type=int, default=8, help="problems per forward in the chat evals")
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
wandb_run = init_wandb(args.run, project="nanochat-sft", config=user_config, rank=rank)

# -----------------------------------------------------------------------------
# Model and tokenizer: the source checkpoint

source_dir, source_tag, source_step = resolve_checkpoint(args.source, args.source_tag or None, args.source_step)
orig_model, tokenizer, source_meta = load_model(
    args.source, device, phase="train", model_tag=source_tag, step=source_step
)
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
# Optimizer: this run's learning rates; the source's moments where they were saved by as many processes

# the source run's LRs unless a flag sets one; the dial's sqrt(batch) rule carried over to this stage's batch
optimizer_config = stage_optimizer_config(source_meta, vars(args), total_batch_size)
optimizer = orig_model.setup_optimizer(**optimizer_config, weight_decay=args.weight_decay)
scale_initial_lrs(optimizer, args.init_lr_frac)
print0(
    f"optimizer: {', '.join(f'{k} {v:g}' for k, v in optimizer_config.items())} | init_lr_frac {args.init_lr_frac} | "
    f"Muon weight decay {args.weight_decay}"
)
optimizer_source = "fresh"
if args.load_optimizer and not args.resume_from_step:
    source_optim = optim_path(source_dir, source_step, rank)
    if source_meta.get("world_size") != world_size:
        print0(
            f"NOTE: not loading the {args.source} optimizer state: saved by {source_meta.get('world_size')} processes, "
            f"this run has {world_size} (the state is sharded per rank); fresh moments, a slightly worse start"
        )
    elif not os.path.exists(source_optim):
        print0(f"NOTE: no optimizer state at {source_optim}: fresh moments, a slightly worse start")
    else:
        load_optimizer_moments(optimizer, torch.load(source_optim, map_location=device, weights_only=True))
        optimizer_source = f"{args.source} {source_tag} step {source_step}"
        print0(f"optimizer state loaded from {source_optim} (learning rates are this run's)")

# -----------------------------------------------------------------------------
# Data

train_task = sft_train_mixture(
    args.identity_file, args.identity_epochs, args.mmlu_epochs, args.gsm8k_epochs, args.spellingbee_size
)
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
checkpoint_dir = os.path.join(get_base_dir(), PHASE_DIRS["sft"], model_tag)
num_iterations = args.num_iterations
start_step = 0
smooth_train_loss, total_training_time = 0.0, 0.0
wall_time_before = 0.0  # wall seconds of the earlier processes of a resumed run, up to their checkpoint
metrics = {"train_loss": [], "val_bpb": [], "chat_eval": []}
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
    metrics, optimizer_source = meta["metrics"], meta["optimizer_source"]
    wall_time_before = meta.get("run_info", {}).get("wall_time_s", 0.0)  # checkpoints from before run_info: 0
    start_step = resume_step
    del model_state, optim_state
    print0(f"resumed from {checkpoint_dir} step {resume_step}")


def save(step):
    slice_states = gather_slice_states([loader.state_dict() for loader in train_loaders])
    meta = {
        "model_config": model_config,
        "user_config": user_config,
        "parent": {"source": args.source, "model_tag": source_tag, "step": source_step},
        "optimizer_config": optimizer_config,
        "optimizer_source": optimizer_source,
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

    # categorical chat evals on the uncompiled model (prompts of varying length)
    if args.chat_eval_every > 0 and (last_step or (step > 0 and step % args.chat_eval_every == 0)):
        orig_model.eval()
        results = {
            name: run_chat_eval(name, orig_model, tokenizer, args.chat_eval_batch_size, args.chat_eval_max_problems)[0]
            for name in CATEGORICAL_TASKS
        }
        orig_model.train()
        results["ChatCORE_cat"] = sum(centered(name, results[name]) for name in CATEGORICAL_TASKS) / 3
        if not metrics["chat_eval"] or metrics["chat_eval"][-1][0] != step:
            metrics["chat_eval"].append([step, results])
        print0(f"step {step:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
        wandb_run.log({"step": step, **{f"chat/{k}": v for k, v in results.items()}})

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
final_chat = metrics["chat_eval"][-1][1] if metrics["chat_eval"] else {}
wall_time = wall_time_before + time.time() - script_start
print0(
    f"peak memory: {peak_memory} | training time: {format_seconds(total_training_time)} | "
    f"wall time: {format_seconds(wall_time)}"
)
print0(f"min val bpb: {min_val_bpb:.6f} | padding: {100 * pad_fraction:.1f}% of row tokens (this process)")
get_report().log(
    section="Chat SFT",
    data=[
        user_config,
        {
            "source": f"{args.source} {source_tag} step {source_step}",
            "optimizer state from": optimizer_source,
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
            **{f"final {k}": v for k, v in final_chat.items()},
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
