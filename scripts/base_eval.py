"""
Evaluate a base checkpoint: the DCLM CORE metric, bits per byte on the train and val splits, and greedy samples
of a few fixed prompts. Writes <base>/base_eval/base_model_<tag>_<step>.csv (Task, Accuracy, Centered, Baseline,
N; last row CORE) and .json, and a report section.

CPU (the fixture eval bundle is the CPU default; ~4 min for a d2 model on a busy 2-core box, mostly bpb):
    python -m scripts.base_eval --max-per-task 16 --device-batch-size 4 --split-tokens 65536
One GPU (downloads the DCLM eval bundle once into <base>/eval_bundle/):
    python -m scripts.base_eval
8 GPUs (ranks stride over the CORE examples and the bpb batches):
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval
CORE only, a subset of tasks, a local bundle, a chosen checkpoint:
    python -m scripts.base_eval --eval core --tasks arc_easy,hellaswag --bundle /data/eval_bundle --model-tag d12 --step 5000
"""

import argparse
import os
import time

from nanochat.checkpoint_manager import find_largest_model, find_last_step, load_model
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0
from nanochat.core_eval import evaluate_core, write_core_results
from nanochat.report import get_report

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]
EVALS = ("core", "bpb", "sample")

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Evaluate a base model: CORE, bits per byte, samples")
parser.add_argument("--eval", default="core,bpb,sample", help=f"comma-separated subset of {','.join(EVALS)}")
parser.add_argument("--model-tag", default=None, help="tag under base_checkpoints/ (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last complete one)")
parser.add_argument("--max-per-task", type=int, default=-1, help="CORE examples per task (-1: all)")
parser.add_argument("--tasks", default=None, help="comma-separated CORE task labels (default: all of core.yaml)")
parser.add_argument(
    "--bundle",
    default=None,
    help="eval bundle: a directory, a URL or 'fixture' (default: $NANOCHAT_EVAL_BUNDLE, else the fixture on CPU, "
    "else the DCLM bundle downloaded once)",
)
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass (CORE and bpb)")
parser.add_argument(
    "--split-tokens", type=int, default=40 * 524288, help="tokens per split for bpb, rounded down to B*T*ranks"
)
parser.add_argument("--device-type", default="", help="cuda | cpu | mps (default: autodetect)")
args = parser.parse_args()
evals = [e.strip() for e in args.eval.split(",") if e.strip()]
assert evals and all(e in EVALS for e in evals), f"--eval takes a comma-separated subset of {EVALS}, got {args.eval!r}"

# -----------------------------------------------------------------------------
# Compute and model

is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None)
checkpoints_dir = os.path.join(get_base_dir(), "base_checkpoints")
model_tag = args.model_tag or find_largest_model(checkpoints_dir)
step = args.step if args.step is not None else find_last_step(os.path.join(checkpoints_dir, model_tag))
model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=model_tag, step=step)
out_dir = os.path.join(get_base_dir(), "base_eval")
t_start = time.time()
report_data = [{"model_tag": model_tag, "step": step, "evals": ",".join(evals), "world_size": world_size}]

# -----------------------------------------------------------------------------
# CORE

if "core" in evals:
    core_out = evaluate_core(
        model,
        tokenizer,
        device,
        bundle_dir=args.bundle,
        tasks=args.tasks,
        max_per_task=args.max_per_task,
        batch_size=args.device_batch_size,
    )
    if rank == 0:
        stem = os.path.join(out_dir, f"base_model_{model_tag}_{step:06d}")
        extra = {"model_tag": model_tag, "step": step, "max_per_task": args.max_per_task, "world_size": world_size}
        write_core_results(core_out, stem + ".csv", stem + ".json", extra=extra)
        print0(f"CORE results written to {stem}.csv and {stem}.json")
    report_data.append(
        {
            "CORE": core_out["core"],
            "CORE examples/s": core_out["examples_per_s"],
            "CORE bundle": core_out["bundle"],
            "CORE max per task": args.max_per_task,
        }
    )
    report_data.append({label: r["centered"] for label, r in core_out["results"].items()})

# -----------------------------------------------------------------------------
# Bits per byte on the train and val splits

if "bpb" in evals:
    from nanochat.dataloader import PretrainLoader
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.tokenizer import get_token_bytes

    B, T = args.device_batch_size, model.config.sequence_len
    tokens_per_step = B * T * world_size
    steps = args.split_tokens // tokens_per_step
    assert steps >= 1, f"--split-tokens {args.split_tokens} is less than one step of B*T*ranks = {tokens_per_step}"
    token_bytes = get_token_bytes(device)
    bpb = {}
    for split in ("train", "val"):
        t0 = time.time()
        loader = PretrainLoader(tokenizer, B, T, split, device=device, rank=rank, world_size=world_size)
        bpb[split] = evaluate_bpb(model, loader, steps, token_bytes)
        print0(f"{split} bpb: {bpb[split]:.6f} ({steps * tokens_per_step:,} tokens, {time.time() - t0:.1f}s)")
    report_data.append(
        {"train bpb": bpb["train"], "val bpb": bpb["val"], "bpb tokens per split": steps * tokens_per_step}
    )

# -----------------------------------------------------------------------------
# Samples (rank 0 only): greedy completions of fixed prompts, then unconditioned samples at temperature 1

if "sample" in evals and rank == 0:
    from nanochat.engine import Engine

    engine = Engine(model, tokenizer)
    bos = tokenizer.get_bos_token_id()
    samples = []
    print0("greedy samples (16 tokens):")
    for prompt in SAMPLE_PROMPTS:
        results, _ = engine.generate_batch(tokenizer.encode(prompt, prepend=bos), max_tokens=16, temperature=0.0)
        samples.append(tokenizer.decode(results[0][1:]))  # drop BOS
        print0(repr(samples[-1]))
    print0("unconditioned samples (128 tokens, temperature 1.0):")
    results, _ = engine.generate_batch([bos], num_samples=8, max_tokens=128, temperature=1.0, seed=42)
    unconditioned = [tokenizer.decode(row[1:]) for row in results]
    for text in unconditioned:
        print0(repr(text))
    report_data.append("Greedy samples:\n\n" + "\n".join(f"- {s!r}" for s in samples))
    report_data.append("Unconditioned samples:\n\n" + "\n".join(f"- {s!r}" for s in unconditioned))

# -----------------------------------------------------------------------------
# Summary and cleanup

print0(f"base_eval done in {time.time() - t_start:.1f}s")
get_report().log(section="Base model evaluation", data=report_data)
compute_cleanup()
