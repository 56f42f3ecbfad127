"""
On-policy RL on GSM8K (nanochat.md 9.3: "GRPO" simplified to REINFORCE with a group baseline). Per step,
--examples-per-step training questions are split across processes; each gets --num-samples rollouts from the
Engine (temperature 1, top-k 50, calculator tool live); reward = the task's evaluation (1 if the "####" answer is
right), advantage = reward - the mean reward of its group (no std normalization, no KL, no PPO clipping: the data
is on-policy). Loss = -sum(logp * advantage) over the sampled assistant tokens (prompt and forced tool output are
masked), divided by the number of such tokens in the whole step over all processes (token-level normalization).
pass@k on GSM8K test every --eval-every steps. Sampling seeds are functions of (seed, step, problem, pass), so a
resumed run continues with identical step results.

CPU (after chat_sft; the tiny task fixtures shipped in the repo):
    NANOCHAT_TASK_DIR=nanochat/data/tasks python -m scripts.chat_rl --examples-per-step 4 --num-samples 4 \
        --num-iterations 4 --max-new-tokens 64 --eval-every 2 --eval-examples 4 --eval-samples 2
One GPU:
    python -m scripts.chat_rl
8 GPUs (examples split across processes, gradients averaged by the optimizer):
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --run rl
Resume the last checkpoint (same world size):
    python -m scripts.chat_rl --resume-from-step latest

Saves model + optimizer + meta to <base>/chatrl_checkpoints/<tag>/ (tag: --model-tag, else the source's tag).
"""

import argparse
import os
import random
import time

import torch
import torch.distributed as dist

from nanochat.chat_data import (
    describe_task_source,
    describe_tasks,
    generative_outcomes,
    pass_at_k,
    policy_gradient_backward,
    resolve_checkpoint,
    scale_initial_lrs,
    shuffled_order,
    stage_optimizer_config,
    sum_over_ranks,
)
from nanochat.checkpoint_manager import (
    PHASE_DIRS,
    find_last_step,
    get_rng_state,
    load_checkpoint,
    load_model,
    load_state_into,
    save_checkpoint,
    set_rng_state,
)
from nanochat.common import (
    autodetect_device_type,
    compute_cleanup,
    compute_init,
    describe_hardware,
    format_seconds,
    get_base_dir,
    get_peak_memory,
    init_wandb,
    print0,
)
from nanochat.engine import FINISHED, Engine
from nanochat.muon import describe_param_groups, set_group_hparams
from nanochat.report import get_report
from tasks.gsm8k import GSM8K

script_start = time.time()  # wall time of the run counts from here (imports excluded)

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="On-policy RL on GSM8K")
# runtime
parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy': no wandb)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
parser.add_argument("--seed", type=int, default=42, help="seed of the problem order and of the sampling seeds")
# source
parser.add_argument("--source", type=str, default="sft", choices=["sft", "mid"], help="stage to start from")
parser.add_argument("--source-tag", type=str, default="", help="source model tag (default: the largest)")
parser.add_argument("--source-step", type=int, default=-1, help="source checkpoint step (-1: the last)")
# horizon and rollouts
parser.add_argument("--num-epochs", type=int, default=1, help="passes over GSM8K train (when --num-iterations -1)")
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: from --num-epochs)")
parser.add_argument("--examples-per-step", type=int, default=16, help="questions per step, all processes together")
parser.add_argument("--num-samples", type=int, default=16, help="rollouts per question (the group)")
parser.add_argument("--device-batch-size", type=int, default=8, help="rows per generation pass / training forward")
parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens sampled per rollout at most")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
parser.add_argument("--top-k", type=int, default=50, help="top-k of the rollouts (0: off)")
# optimizer (-1: the source run's base LRs and batch scale)
parser.add_argument("--matrix-lr", type=float, default=-1.0, help="Muon LR of the block matrices (-1: source's)")
parser.add_argument("--embedding-lr", type=float, default=-1.0, help="AdamW LR of wte (-1: source's)")
parser.add_argument("--unembedding-lr", type=float, default=-1.0, help="AdamW LR of lm_head (-1: source's)")
parser.add_argument("--scalar-lr", type=float, default=-1.0, help="AdamW LR of the per-layer scalars (-1: source's)")
parser.add_argument("--init-lr-frac", type=float, default=0.05, help="all LRs times this; then linear to 0")
parser.add_argument("--weight-decay", type=float, default=0.0, help="Muon weight decay")
# evaluation and checkpoints
parser.add_argument("--eval-every", type=int, default=60, help="pass@k on GSM8K test every N steps and at the end")
parser.add_argument("--eval-examples", type=int, default=400, help="GSM8K test problems per evaluation")
parser.add_argument("--eval-samples", type=int, default=8, help="samples per problem (pass@1 .. pass@this)")
parser.add_argument("--save-every", type=int, default=60, help="checkpoint every N steps (-1: only at the end)")
parser.add_argument("--resume-from-step", type=str, default="", help="step to resume from, or 'latest'")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint directory name (default: the source tag)")
args = parser.parse_args()
user_config = vars(args).copy()

# -----------------------------------------------------------------------------
# Compute init, model, optimizer

assert args.dtype in ("", "bfloat16", "float32"), f"--dtype must be bfloat16 or float32, got {args.dtype!r}"
if args.dtype:
    os.environ["NANOCHAT_DTYPE"] = args.dtype
device_type = args.device_type or autodetect_device_type()
is_ddp, rank, local_rank, world_size, device = compute_init(device_type, seed=args.seed)
print0(f"device: {device_type} x {world_size}")
wandb_run = init_wandb(args.run, project="nanochat-rl", config=user_config, rank=rank)

source_dir, source_tag, source_step = resolve_checkpoint(args.source, args.source_tag or None, args.source_step)
model, tokenizer, source_meta = load_model(args.source, device, phase="train", model_tag=source_tag, step=source_step)
model_config = source_meta["model_config"]
engine = Engine(model, tokenizer)  # not compiled: rollouts and training batches have varying lengths
bos = tokenizer.get_bos_token_id()

optimizer_config = stage_optimizer_config(source_meta, vars(args))  # the source's LRs unless a flag sets one
optimizer = model.setup_optimizer(**optimizer_config, weight_decay=args.weight_decay)
scale_initial_lrs(optimizer, args.init_lr_frac)
print0(f"optimizer: {', '.join(f'{k} {v:g}' for k, v in optimizer_config.items())} | init_lr_frac {args.init_lr_frac}")

# -----------------------------------------------------------------------------
# Data: a fixed shuffled order of GSM8K train; step s takes positions s*E .. s*E+E-1, process r a contiguous E/W

train_task = GSM8K("train")
val_task = GSM8K("test")
E = args.examples_per_step
assert E % world_size == 0, f"--examples-per-step {E} must be divisible by the number of processes {world_size}"
examples_per_rank = E // world_size
order = shuffled_order(len(train_task), args.seed)
num_steps = args.num_iterations if args.num_iterations > 0 else (len(train_task) // E) * args.num_epochs
assert num_steps >= 1, f"{len(train_task)} training problems make no step of {E} examples: lower --examples-per-step"
print0(f"GSM8K train {len(train_task):,} problems | {E} per step x {args.num_samples} samples | {num_steps} steps")
data_info = {  # for the checkpoint meta and the model card
    "task_source": describe_task_source(),
    "train_mixture": describe_tasks(train_task),
    "eval_task": describe_tasks(val_task),
    "eval_problems": min(args.eval_examples, len(val_task)) if args.eval_examples >= 0 else len(val_task),
}


def step_problems(step):
    start = step * E + rank * examples_per_rank
    return [order[(start + j) % len(order)] for j in range(examples_per_rank)]


def sampling_seed(step, index, pass_idx):
    # a function of what is sampled, not of when: a resumed run draws the same rollouts (str seeds hash stably)
    return random.Random(f"{args.seed}/{step}/{index}/{pass_idx}").randrange(2**31)


# -----------------------------------------------------------------------------
# Checkpoints and resume

model_tag = args.model_tag or source_tag
checkpoint_dir = os.path.join(get_base_dir(), PHASE_DIRS["rl"], model_tag)
start_step = 0
total_training_time = 0.0
tokens_seen = 0  # tokens of the sequences trained on (prompts + rollouts), all processes
wall_time_before = 0.0  # wall seconds of the earlier processes of a resumed run, up to their checkpoint
metrics = {"reward": [], "loss": [], "gen_tokens": [], "pass_at_k": []}
resume_step = None
if args.resume_from_step:
    resume_step = find_last_step(checkpoint_dir) if args.resume_from_step == "latest" else int(args.resume_from_step)
    model_state, optim_state, meta = load_checkpoint(
        checkpoint_dir, resume_step, device, load_optimizer=True, rank=rank
    )
    saved = (meta["world_size"], meta["model_config"], meta["num_steps"])
    assert saved == (world_size, model_config, num_steps), (
        f"checkpoint has (world_size, model, num_steps) = {saved}, run has {(world_size, model_config, num_steps)}"
    )
    load_state_into(model, model_state)
    optimizer.load_state_dict(optim_state)
    metrics, total_training_time = meta["metrics"], meta["loop_state"]["total_training_time"]
    tokens_seen = meta.get("tokens_seen", 0)  # checkpoints from before these fields: counted from here
    wall_time_before = meta.get("run_info", {}).get("wall_time_s", 0.0)
    set_rng_state(meta["rng_state"])
    start_step = resume_step
    del model_state, optim_state
    print0(f"resumed from {checkpoint_dir} step {resume_step}")


def save(step):
    meta = {
        "model_config": model_config,
        "user_config": user_config,
        "parent": {"source": args.source, "model_tag": source_tag, "step": source_step},
        "optimizer_config": optimizer_config,
        "optimizer": describe_param_groups(optimizer, scheduled={"adamw": ("lr",), "muon": ("lr",)}),
        "data": data_info,
        "tokens_seen": tokens_seen,
        "num_steps": num_steps,
        "world_size": world_size,
        "max_seq_len": model_config["sequence_len"],
        "data_position": {"examples_seen": step * E, "order_seed": args.seed},
        "loop_state": {"total_training_time": total_training_time},
        "rng_state": get_rng_state(),
        "metrics": metrics,
        "run_info": run_info(),
    }
    save_checkpoint(checkpoint_dir, step, model.state_dict(), optimizer.state_dict(), meta, rank=rank)


def run_info():
    """What is known of the run so far: hardware, wall time, peak memory, mean throughput of the timed steps."""
    return {
        **describe_hardware(device, world_size, model.compute_dtype),
        "wall_time_s": wall_time_before + time.time() - script_start,
        # tokens trained on per second of whole steps (rollouts, which dominate, included)
        "mean_tok_per_sec": timed_tokens / timed_time if timed_steps else None,
    }


# -----------------------------------------------------------------------------
# Rollouts and the policy-gradient step


def rollout(index, step):
    """num_samples completions of one problem: (sequences, masks, rewards); mask 1 = a sampled token."""
    conversation = train_task[index]
    prompt = tokenizer.render_for_completion(conversation)
    if len(prompt) >= model_config["sequence_len"]:
        return [], [], []
    sequences, masks, rewards = [], [], []
    for pass_idx, start in enumerate(range(0, args.num_samples, args.device_batch_size)):
        num_rows = min(args.device_batch_size, args.num_samples - start)
        rows = [[] for _ in range(num_rows)]
        row_masks = [[] for _ in range(num_rows)]
        for token_column, mask_column in engine.generate(
            prompt, num_samples=num_rows, max_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k or None, seed=sampling_seed(step, index, pass_idx),
        ):  # fmt: skip
            for r, (token, mask) in enumerate(zip(token_column, mask_column)):
                if token != FINISHED:
                    rows[r].append(token)  # the stop token too: ending the answer is an action the policy takes
                    row_masks[r].append(mask)
        for tokens, token_masks in zip(rows, row_masks):
            completion = tokenizer.decode([t for t in tokens if t not in engine.stop_token_ids])
            rewards.append(float(train_task.evaluate(conversation, completion)))
            sequences.append(prompt + tokens)
            masks.append([0] * len(prompt) + token_masks)
    return sequences, masks, rewards


def evaluate_pass_at_k(step):
    model.eval()
    outcomes, n = generative_outcomes(
        model, tokenizer, val_task, num_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
        temperature=1.0, top_k=args.top_k or None, batch_size=args.device_batch_size, max_problems=args.eval_examples,
        seed=args.seed,
    )  # fmt: skip
    model.train()
    results = {f"pass@{k}": pass_at_k(outcomes, n, k, device) for k in range(1, args.eval_samples + 1)}
    if not metrics["pass_at_k"] or metrics["pass_at_k"][-1][0] != step:
        metrics["pass_at_k"].append([step, results])
    print0(f"step {step:05d} | GSM8K test ({n} problems) | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
    wandb_run.log({"step": step, **{f"eval/{k}": v for k, v in results.items()}})


# -----------------------------------------------------------------------------
# Training loop

timed_steps, timed_time, timed_tokens = 0, 0.0, 0
step = start_step
while True:
    last_step = step == num_steps
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        evaluate_pass_at_k(step)
    periodic = args.save_every > 0 and step % args.save_every == 0 and step > 0 and step != resume_step
    if last_step or periodic:
        save(step)
    if last_step:
        break

    t0 = time.perf_counter()
    lrm = 1.0 - step / num_steps
    set_group_hparams(optimizer, lrm)

    # rollouts (no gradient), then advantages per group
    sequences, masks, advantages, rewards, skipped = [], [], [], [], 0
    for index in step_problems(step):
        group_sequences, group_masks, group_rewards = rollout(index, step)
        if not group_sequences:
            skipped += 1
            continue
        baseline = sum(group_rewards) / len(group_rewards)  # the group mean (no std normalization)
        sequences += group_sequences
        masks += group_masks
        advantages += [r - baseline for r in group_rewards]
        rewards += group_rewards
    t_gen = time.perf_counter() - t0

    # token-level normalization over the whole step: every process divides by the same global token count
    (num_valid,) = sum_over_ranks([sum(sum(mask[1:]) for mask in masks)], device)
    scale = world_size / max(num_valid, 1)  # the optimizer averages over processes: times world_size makes a sum
    if sequences:
        loss = policy_gradient_backward(model, sequences, masks, advantages, args.device_batch_size, bos, scale)
    else:  # every prompt of this process was too long: zero gradients keep the optimizer's collectives in step
        (model(torch.full((1, 1), bos, device=device)).sum() * 0.0).backward()
        loss = 0.0
    optimizer.step()
    model.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0

    num_tokens = sum(len(sequence) for sequence in sequences)
    reward_sum, num_rollouts, skipped, loss, num_tokens = sum_over_ranks(
        [sum(rewards), len(rewards), skipped, loss, num_tokens], device
    )
    tokens_seen += int(num_tokens)
    loss /= world_size  # each process's part already carries the factor world_size / (valid tokens of the step)
    mean_reward = reward_sum / max(num_rollouts, 1)
    gen_tokens = num_valid / max(num_rollouts, 1)
    metrics["reward"].append(mean_reward)
    metrics["loss"].append(loss)
    metrics["gen_tokens"].append(gen_tokens)
    if step > start_step:  # the first step of a process warms up
        total_training_time += dt
        timed_time += dt
        timed_steps += 1
        timed_tokens += int(num_tokens)
    eta = format_seconds((num_steps - step - 1) * timed_time / timed_steps) if timed_steps else "?"
    note = f" | {int(skipped)} prompts too long, skipped" if skipped else ""
    print0(
        f"step {step:05d}/{num_steps:05d} | reward {mean_reward:.4f} | loss {loss:+.6f} | sampled tokens/rollout "
        f"{gen_tokens:.1f} | lrm {lrm:.3f} | dt {dt:.2f}s (rollouts {t_gen:.2f}s) | "
        f"elapsed {format_seconds(total_training_time)} | eta {eta}{note}"
    )
    wandb_run.log({"step": step, "train/reward": mean_reward, "train/loss": loss, "train/gen_tokens": gen_tokens})
    step += 1

# -----------------------------------------------------------------------------
# Summary

peak_memory = get_peak_memory(device)
final_pass = metrics["pass_at_k"][-1][1] if metrics["pass_at_k"] else {}
first_pass = metrics["pass_at_k"][0][1] if metrics["pass_at_k"] else {}
wall_time = wall_time_before + time.time() - script_start
print0(
    f"peak memory: {peak_memory} | training time: {format_seconds(total_training_time)} | "
    f"wall time: {format_seconds(wall_time)} | tokens trained on: {tokens_seen:,}"
)
get_report().log(
    section="Chat RL",
    data=[
        user_config,
        {
            "source": f"{args.source} {source_tag} step {source_step}",
            "steps": num_steps,
            "mean reward, first step": metrics["reward"][0] if metrics["reward"] else None,
            "mean reward, last step": metrics["reward"][-1] if metrics["reward"] else None,
            **{f"first {k}": v for k, v in first_pass.items()},
            **{f"final {k}": v for k, v in final_pass.items()},
            "training time (s)": total_training_time,
            "wall time (s)": wall_time,
            "tokens trained on": tokens_seen,
            "peak memory": peak_memory,
        },
    ],
)

# -----------------------------------------------------------------------------
# Cleanup

if is_ddp:
    dist.barrier()
wandb_run.finish()
compute_cleanup()
