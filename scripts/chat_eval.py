"""
Evaluate a chat model (mid, sft or rl) on ARC-Easy, ARC-Challenge and MMLU (categorical: the logits of the answer
letters, batched) and GSM8K, HumanEval and SpellingBee (generative, through the Engine; pass@k with -n samples).
ChatCORE = mean over the six tasks of the accuracy centered on its random baseline (0.25 for the 4-choice tasks, 0
for the generative ones); it is only reported when all six ran. Results go to <base>/chat_eval/ (CSV and JSON), into
the checkpoint's meta file (rewritten atomically: "chat_results" = {task: {"accuracy", "centered", "baseline", "n",
"seconds"}}, merged with earlier runs; "chatcore"; "chat_eval_settings"; nanochat/model_card.py reads them) and into
the report ("Chat evaluation <source>").

CPU (the tiny task fixtures shipped in the repo):
    NANOCHAT_TASK_DIR=nanochat/data/tasks python -m scripts.chat_eval -i sft -m 128
One GPU / 8 GPUs (problems strided over processes, counts summed):
    python -m scripts.chat_eval -i sft
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -- -i sft
Some tasks only, a quick look:
    python -m scripts.chat_eval -i rl -a "GSM8K|SpellingBee" -x 100
"""

import argparse
import csv
import json
import os
import time

import torch.distributed as dist

from nanochat.chat_data import BASELINES, CHAT_EVAL_TASKS, centered, chatcore, resolve_checkpoint, run_chat_eval
from nanochat.checkpoint_manager import atomic_write, load_model, meta_path, read_meta
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_base_dir, print0
from nanochat.report import get_report

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Chat evaluations and ChatCORE")
parser.add_argument("-i", "--source", type=str, default="sft", choices=["mid", "sft", "rl"], help="stage to evaluate")
parser.add_argument("-a", "--tasks", type=str, default="|".join(CHAT_EVAL_TASKS), help="tasks separated by |")
parser.add_argument("-t", "--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
parser.add_argument("-m", "--max-new-tokens", type=int, default=512, help="tokens sampled per answer at most")
parser.add_argument("-n", "--num-samples", type=int, default=1, help="samples per generative problem (pass@n)")
parser.add_argument("-k", "--top-k", type=int, default=50, help="top-k sampling (0: off)")
parser.add_argument("-b", "--batch-size", type=int, default=8, help="problems per forward / rows decoded together")
parser.add_argument("-g", "--model-tag", type=str, default="", help="model tag (default: the largest)")
parser.add_argument("-s", "--step", type=int, default=-1, help="checkpoint step (-1: the last)")
parser.add_argument("-x", "--max-problems", type=int, default=-1, help="problems per task (-1: all)")
parser.add_argument("--seed", type=int, default=42, help="seed of the samplers")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--dtype", type=str, default="", help="bfloat16 | float32 (default: bf16 on CUDA, fp32 else)")
args = parser.parse_args()
task_names = args.tasks.split("|")
unknown = [name for name in task_names if name not in CHAT_EVAL_TASKS]
assert not unknown, f"unknown tasks {unknown}; known: {CHAT_EVAL_TASKS}"

# -----------------------------------------------------------------------------
# Compute init and model

if args.dtype:
    os.environ["NANOCHAT_DTYPE"] = args.dtype
device_type = args.device_type or autodetect_device_type()
is_ddp, rank, local_rank, world_size, device = compute_init(device_type, seed=args.seed)
ckpt_dir, model_tag, step = resolve_checkpoint(args.source, args.model_tag or None, args.step)
model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=model_tag, step=step)

# -----------------------------------------------------------------------------
# Evaluate

generation = {
    "num_samples": args.num_samples,
    "max_new_tokens": args.max_new_tokens,
    "temperature": args.temperature,
    "top_k": args.top_k or None,
    "seed": args.seed,
}
results, seconds, counts = {}, {}, {}
for name in task_names:
    t0 = time.perf_counter()
    print0(f"{name}: evaluating...")
    results[name], counts[name] = run_chat_eval(
        name, model, tokenizer, args.batch_size, args.max_problems, **generation
    )
    seconds[name] = time.perf_counter() - t0
    print0(
        f"{name}: accuracy {results[name]:.4f} (centered {centered(name, results[name]):+.4f}) in {seconds[name]:.1f}s"
    )
all_ran = set(task_names) == set(CHAT_EVAL_TASKS)
if all_ran:
    results["ChatCORE"] = chatcore({name: results[name] for name in CHAT_EVAL_TASKS})
    print0(f"ChatCORE: {results['ChatCORE']:.4f}")
else:
    print0("ChatCORE: not computed (needs all six tasks)")

# -----------------------------------------------------------------------------
# Write results: CSV + JSON, the checkpoint's meta, the report

settings = {
    "source": args.source,
    "model_tag": model_tag,
    "step": step,
    "max_problems": args.max_problems,
    "batch_size": args.batch_size,
    "world_size": world_size,
    **generation,
}
if rank == 0:
    out_dir = os.path.join(get_base_dir(), "chat_eval")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{args.source}_{model_tag}_{step:06d}")
    with open(stem + ".csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Task", "Accuracy", "Centered", "Baseline", "Seconds"])
        for name in task_names:
            writer.writerow([name, f"{results[name]:.6f}", f"{centered(name, results[name]):.6f}", BASELINES[name],
                             f"{seconds[name]:.1f}"])  # fmt: skip
        if all_ran:
            writer.writerow(["ChatCORE", "", f"{results['ChatCORE']:.6f}", "", ""])
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "results": results, "seconds": seconds}, f, indent=2)
    # the checkpoint carries its own scores: merge into its meta (other tasks' earlier results are kept). ChatCORE is
    # written by a run of all six tasks; a partial run removes an older one, which no longer matches chat_results.
    meta = read_meta(ckpt_dir, step)
    chat_results = meta.get("chat_results", {})
    for name in task_names:
        chat_results[name] = {"accuracy": results[name], "centered": centered(name, results[name]),
                              "baseline": BASELINES[name], "n": counts[name], "seconds": seconds[name]}  # fmt: skip
    meta["chat_results"] = chat_results
    meta.pop("chatcore", None)
    if all_ran:
        meta["chatcore"] = results["ChatCORE"]
    meta["chat_eval_settings"] = settings  # of the latest run
    atomic_write(meta_path(ckpt_dir, step), lambda f: json.dump(meta, f, indent=2), binary=False)
    print0(f"results written to {stem}.csv/.json and {meta_path(ckpt_dir, step)}")
get_report().log(section=f"Chat evaluation {args.source}", data=[settings, results])

# -----------------------------------------------------------------------------
# Cleanup

if is_ddp:
    dist.barrier()
compute_cleanup()
