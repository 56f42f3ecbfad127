"""
Bits per byte of a base checkpoint on the train and val splits, and a few greedy samples.

CPU:
    python -m scripts.base_loss --model-tag d4 --eval-tokens 65536 --device-batch-size 8
One GPU / 8 GPUs (the evaluation is split across ranks and summed):
    python -m scripts.base_loss
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss -- --model-tag d24
"""

import argparse

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0
from nanochat.dataloader import PretrainLoader
from nanochat.loss_eval import evaluate_bpb
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Train/val bits per byte and samples of a base checkpoint")
parser.add_argument("--model-tag", type=str, default=None, help="checkpoint directory (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last one)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (default: autodetect)")
parser.add_argument("--device-batch-size", type=int, default=-1, help="rows per forward (-1: 32 on CUDA, else 4)")
parser.add_argument("--eval-tokens", type=int, default=20 * 2**19, help="tokens per split, all ranks together")
parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per greedy sample")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# Compute init, model, tokenizer

device_type = args.device_type or autodetect_device_type()
is_ddp, rank, local_rank, world_size, device = compute_init(device_type)
model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step)
token_bytes = get_token_bytes(device)
T = model.config.sequence_len
B = args.device_batch_size if args.device_batch_size > 0 else (32 if device_type == "cuda" else 4)
steps = args.eval_tokens // (B * T * world_size)
assert steps >= 1, f"--eval-tokens {args.eval_tokens} is less than one batch of {B} x {T} x {world_size} tokens"
print0(f"step {meta['step']} | {steps} batches of {B} x {T} tokens per rank per split")

# -----------------------------------------------------------------------------
# Bits per byte

results = {}
for split in ("train", "val"):
    loader = PretrainLoader(tokenizer, B, T, split, device)
    results[f"{split} bpb"] = evaluate_bpb(model, loader, steps, token_bytes)
    print0(f"{split} bpb: {results[f'{split} bpb']:.6f}")

# -----------------------------------------------------------------------------
# Samples (rank 0, greedy, naive generation)

prompts = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]
samples = []
if rank == 0:
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            out = list(model.generate(ids, max_tokens=args.max_new_tokens, temperature=0))
            samples.append(tokenizer.decode(ids[1:] + out))
            print0(f"sample: {samples[-1]!r}")

get_report().log(
    section="Base model loss",
    data=[
        {"model step": meta["step"], "eval tokens per split": steps * B * T * world_size},
        results,
        {"samples": samples},
    ],
)

# -----------------------------------------------------------------------------
# Cleanup

compute_cleanup()
