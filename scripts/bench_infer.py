"""
Inference benchmark of the Engine: prefill tok/s, time to first token, decode tok/s at several batch sizes, and peak
memory, for a checkpoint or for a randomly initialised model of a given depth (speed does not depend on the weights).

    python -m scripts.bench_infer --depth 4 --vocab-size 8192          # random d4 (CPU: ~10 s)
    python -m scripts.bench_infer --depth 2 --vocab-size 8192 --batch-sizes 1,4 --decode-tokens 32 --num-threads 1
    python -m scripts.bench_infer --source sft                         # the largest SFT checkpoint (one GPU)
    python -m scripts.bench_infer --source base --model-tag d12 --step 5000 --prompt-len 1024 --batch-sizes 1,8,32
    python -m scripts.bench_infer --depth 4 --vocab-size 8192 --hf-compare  # vs transformers' generate (CPU: <1 min)

What is timed (wall clock, CUDA synchronised by the .tolist() of every decode step):
- prefill: one batch-1 forward of --prompt-len tokens into a fresh KV cache (median of --repeats), as tokens/s.
- per batch size B: Engine.generate(prompt, num_samples=B, max_tokens=--decode-tokens) with stop tokens disabled so
  that every row runs the full length. TTFT = call to first yielded column (prefill + cache copy + first sample);
  decode = the remaining steps, reported as median ms per step and B x steps / time in tokens/s, and per CPU-second
  of this process (steadier than wall time on a CPU shared with other jobs).
- memory: CUDA max_memory_allocated per batch size; on CPU the process's peak RSS so far (it never goes down).
A warm-up generate precedes each measurement. Prints a table; the last line is one JSON document with everything.

--hf-compare: the same weights through HuggingFace transformers. The model (checkpoint or random) is exported with
nanochat/hf_export.py into a temporary directory (custom modeling code unless the native `nanochat` type fits), loaded
with AutoModelForCausalLM (trust_remote_code, offline, in our compute dtype: fp32 on CPU, bf16 on CUDA) and timed with
greedy `generate` (use_cache=True, exactly --decode-tokens new tokens, the prompt repeated on every row) against our
Engine, also greedy, at every batch size. A streamer timestamps each token as generate hands it over, so TTFT and
ms/step mean the same for both. Runs alternate (ours, HF, ours, HF, ... --repeats pairs, medians reported) so that
load from other jobs hits both alike. Our Engine prefills one row and copies its cache to the others; transformers
prefills every row, so its TTFT grows with the batch. Once, row 0's greedy tokens of the two must agree (printed).
"""

import argparse
import itertools
import json
import os
import resource
import statistics
import tempfile
import time

import torch

from nanochat.checkpoint_manager import build_model, load_model
from nanochat.common import autodetect_device_type, compute_init, get_device_name, print0
from nanochat.dial import derive_hparams
from nanochat.engine import Engine
from nanochat.gpt import KVCache

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Benchmark KV-cached inference")
parser.add_argument("--source", type=str, default=None, choices=["base", "mid", "sft", "rl"], help="checkpoint stage")
parser.add_argument("--model-tag", type=str, default=None, help="checkpoint tag, e.g. d12 (default: the largest)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("--depth", type=int, default=None, help="random model of this depth (instead of --source)")
parser.add_argument("--vocab-size", type=int, default=32768, help="random model: vocab size (tokens)")
parser.add_argument("--sequence-len", type=int, default=2048, help="random model: context length (tokens)")
parser.add_argument("--window-pattern", type=str, default="L", help="random model: S/L pattern (S is slow on SDPA)")
parser.add_argument("--prompt-len", type=int, default=256, help="prompt length in tokens (prefill and decode)")
parser.add_argument("--decode-tokens", type=int, default=64, help="tokens generated per row")
parser.add_argument("--batch-sizes", type=str, default="1,4,16", help="comma-separated decode batch sizes (rows)")
parser.add_argument("--repeats", type=int, default=3, help="prefill repeats and --hf-compare pairs (medians)")
parser.add_argument("--num-threads", type=int, default=0, help="CPU torch threads (0 = torch's default)")
parser.add_argument("--device-type", type=str, default="", choices=["", "cuda", "mps", "cpu"], help="default: auto")
parser.add_argument("--hf-compare", action="store_true", help="also time transformers' generate on the same weights")
args = parser.parse_args()
assert (args.source is None) != (args.depth is None), "give exactly one of --source (checkpoint) or --depth (random)"
batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

# -----------------------------------------------------------------------------
# Compute, model

device_type = args.device_type or autodetect_device_type()
_, _, _, _, device = compute_init(device_type)
if args.num_threads > 0:
    torch.set_num_threads(args.num_threads)  # on a shared CPU, fewer threads than cores avoids oversubscription


def sync():
    if device_type == "cuda":
        torch.cuda.synchronize()


if args.source is not None:
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    model_name = f"{args.source}/{args.model_tag or 'largest'}@{meta['step']}"
else:
    from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

    # A byte-level tokenizer stands in (the Engine only needs the special ids); the model gets the asked vocab.
    tokenizer = Tokenizer.from_mergeable_ranks({bytes([i]): i for i in range(256)})
    assert args.vocab_size >= 256 + len(SPECIAL_TOKENS), f"--vocab-size {args.vocab_size} must be >= 265"
    hparams = derive_hparams(args.depth, args.vocab_size, args.sequence_len, window_pattern=args.window_pattern)
    model = build_model(hparams.model_config, device)
    model.eval()
    model_name = f"random d{args.depth}"
config = model.config
engine = Engine(model, tokenizer)
engine.stop_token_ids = set()  # every row decodes the full --decode-tokens (a random model may "stop" any time)
assert args.prompt_len + args.decode_tokens <= config.sequence_len, (
    f"--prompt-len {args.prompt_len} + --decode-tokens {args.decode_tokens} exceeds the context {config.sequence_len}"
)

n_params = sum(p.numel() for p in model.parameters())
weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
head_dim = config.n_embd // config.n_head
dtype_bytes = torch.empty(0, dtype=model.compute_dtype).element_size()
kv_bytes_per_token = config.n_layer * 2 * config.n_kv_head * head_dim * dtype_bytes
card = {
    "model": model_name,
    "model_config": {k: getattr(config, k) for k in vars(config)},
    "params": n_params,
    "weight_bytes": weight_bytes,
    "compute_dtype": str(model.compute_dtype).removeprefix("torch."),
    "kv_bytes_per_token": kv_bytes_per_token,
    "device": get_device_name(device),
    "torch_threads": torch.get_num_threads(),
}
print0(f"model: {model_name}  {n_params / 1e6:.2f}M params ({weight_bytes / 2**20:.1f} MiB), {card['compute_dtype']}")
print0(
    f"       n_layer {config.n_layer}, n_embd {config.n_embd}, n_head {config.n_head}/{config.n_kv_head} kv, "
    f"vocab {config.vocab_size}, context {config.sequence_len}, windows {config.window_pattern}"
)
print0(f"       KV cache {kv_bytes_per_token / 1024:.1f} KiB per token per row")
print0(f"device: {card['device']} ({device_type}, {card['torch_threads']} torch threads)")


def peak_memory_bytes():
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


generator = torch.Generator().manual_seed(0)
specials = set(tokenizer.get_special_tokens())
n_ordinary = tokenizer.get_vocab_size() - len(specials)
prompt = [tokenizer.get_bos_token_id()] + torch.randint(
    0, n_ordinary, (args.prompt_len - 1,), generator=generator
).tolist()

# -----------------------------------------------------------------------------
# Prefill


@torch.inference_mode()
def time_prefill():
    kv_cache = KVCache(1, args.prompt_len, config.n_kv_head, head_dim, config.n_layer, device, model.compute_dtype)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    sync()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model(ids, kv_cache=kv_cache)
    sync()
    return time.perf_counter() - t0, time.process_time() - cpu0


time_prefill()  # warm-up
timings = [time_prefill() for _ in range(args.repeats)]
prefill_s = statistics.median(wall for wall, _ in timings)
prefill_cpu_s = statistics.median(cpu for _, cpu in timings)
prefill = {
    "prompt_len": args.prompt_len,
    "seconds": prefill_s,
    "tok_per_s": args.prompt_len / prefill_s,
    "tok_per_cpu_s": args.prompt_len / max(prefill_cpu_s, 1e-9),
}
print0(
    f"prefill: {args.prompt_len} tokens in {prefill_s * 1e3:.1f} ms = {prefill['tok_per_s']:,.0f} tok/s "
    f"({prefill['tok_per_cpu_s']:,.0f} tok per CPU-s)"
)

# -----------------------------------------------------------------------------
# Decode sweep


def time_generate(batch_size, max_tokens, temperature=1.0, top_k=50):
    """Wall time of every yielded column from the call, the process CPU time of the decode steps, row 0's tokens."""
    times, first_row = [], []
    t0 = time.perf_counter()
    for token_column, _ in engine.generate(
        prompt, num_samples=batch_size, max_tokens=max_tokens, temperature=temperature, top_k=top_k
    ):
        times.append(time.perf_counter() - t0)  # the column is a Python list: the device work is done
        first_row.append(token_column[0])
        if len(times) == 1:
            cpu0 = time.process_time()
    return times, time.process_time() - cpu0, first_row


def step_stats(batch_size, times, decode_cpu_s):
    """times: seconds from the call to each new token (one per row and step). TTFT, then the decode steps after it."""
    steps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "ttft_ms": times[0] * 1e3,
        "ms_per_step": statistics.median(steps) * 1e3,
        "decode_tok_per_s": batch_size * len(steps) / (times[-1] - times[0]),
        # per CPU-second of this process (all its threads): the number to quote on a CPU shared with other jobs
        "decode_tok_per_cpu_s": batch_size * len(steps) / max(decode_cpu_s, 1e-9),
    }


decode = []
header = f"{'batch':>5} {'TTFT ms':>9} {'ms/step':>8} {'decode tok/s':>13} {'tok/CPU-s':>10} {'peak mem MiB':>13}"
print0(header)
print0("-" * len(header))
for batch_size in batch_sizes:
    time_generate(batch_size, 4)  # warm-up (allocator, kernels)
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, decode_cpu_s, _ = time_generate(batch_size, args.decode_tokens)
    row = {
        "batch_size": batch_size,
        **step_stats(batch_size, times, decode_cpu_s),
        "peak_memory_bytes": peak_memory_bytes(),
        "peak_memory_kind": "cuda_max_allocated" if device_type == "cuda" else "process_peak_rss",
    }
    decode.append(row)
    print0(
        f"{batch_size:>5} {row['ttft_ms']:>9.1f} {row['ms_per_step']:>8.2f} {row['decode_tok_per_s']:>13,.0f} "
        f"{row['decode_tok_per_cpu_s']:>10,.0f} {row['peak_memory_bytes'] / 2**20:>13,.0f}"
    )

# -----------------------------------------------------------------------------
# Against transformers' generate (--hf-compare)

hf_compare = None
if args.hf_compare:
    tmp_dir = tempfile.TemporaryDirectory(prefix="nanochat_hf_compare_")
    # transformers copies remote code into a module cache read when it is imported: keep that copy in the temp dir
    # too (one directory per run would otherwise pile up in ~/.cache/huggingface/modules)
    os.environ.setdefault("HF_MODULES_CACHE", os.path.join(tmp_dir.name, "modules"))
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from nanochat.hf_export import export_model

    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar would land in the benchmark log
    export_dir = os.path.join(tmp_dir.name, "export")
    export_info = export_model(model, tokenizer, export_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(
        export_dir, trust_remote_code=True, local_files_only=True, dtype=model.compute_dtype
    )
    hf_model.to(device).eval()
    hf_dtype = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
    print0(
        f"transformers {transformers.__version__}: {type(hf_model).__name__} ({export_info['kind']} export), {hf_dtype}"
    )

    with torch.inference_mode():
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        max_logit_diff = (model(ids).float() - hf_model(ids).logits.float()).abs().max().item()
    print0(f"max |logit diff| nanochat vs transformers over the {args.prompt_len}-token prompt: {max_logit_diff:.2e}")

    class TokenTimer(BaseStreamer):
        """generate() hands the streamer the prompt, then each new token column (on the host: the step is done)."""

        def __init__(self):
            self.t0 = time.perf_counter()
            self.times, self.cpu0, self.cpu1, self.seen_prompt = [], None, None, False

        def put(self, value):
            if not self.seen_prompt:
                self.seen_prompt = True
                return
            self.times.append(time.perf_counter() - self.t0)
            if len(self.times) == 1:
                self.cpu0 = time.process_time()

        def end(self):
            self.cpu1 = time.process_time()

    def time_hf_generate(batch_size, max_tokens):
        """Like time_generate, greedy, through transformers. eos unset: no row stops early and no logits processor
        touches the scores (min_new_tokens would mask eos), as in our Engine with stop_token_ids emptied."""
        ids = torch.tensor([prompt] * batch_size, dtype=torch.long, device=device)
        timer = TokenTimer()
        out = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            streamer=timer,
        )
        assert len(timer.times) == max_tokens, f"transformers generated {len(timer.times)} tokens, not {max_tokens}"
        return timer.times, timer.cpu1 - timer.cpu0, out[0, len(prompt) :].tolist()

    greedy = None
    compare_rows = []
    for batch_size in batch_sizes:
        time_generate(batch_size, 4, temperature=0.0, top_k=None)  # warm-up both
        time_hf_generate(batch_size, 4)
        runs = {"nanochat": [], "transformers": []}
        for _ in range(args.repeats):  # alternate, so that load from other jobs lands on both
            times, cpu_s, ours_tokens = time_generate(batch_size, args.decode_tokens, temperature=0.0, top_k=None)
            runs["nanochat"].append(step_stats(batch_size, times, cpu_s))
            times, cpu_s, hf_tokens = time_hf_generate(batch_size, args.decode_tokens)
            runs["transformers"].append(step_stats(batch_size, times, cpu_s))
            if greedy is None:
                first_diff = next((i for i, (a, b) in enumerate(zip(ours_tokens, hf_tokens)) if a != b), None)
                greedy = {"match": ours_tokens == hf_tokens, "tokens": len(ours_tokens), "first_mismatch": first_diff}
                if greedy["match"]:
                    print0(f"greedy check: row 0 identical for all {len(ours_tokens)} tokens (nanochat = transformers)")
                else:
                    print0(
                        f"GREEDY MISMATCH: row 0 differs from token {first_diff} on (nanochat "
                        f"{ours_tokens[first_diff : first_diff + 8]} vs transformers {hf_tokens[first_diff : first_diff + 8]})"
                        f"; max |logit diff| on the prompt {max_logit_diff:.2e}"
                    )
        row = {"batch_size": batch_size}
        for name, stats in runs.items():
            row[name] = {key: statistics.median(s[key] for s in stats) for key in stats[0]}
        ours, hf = row["nanochat"], row["transformers"]
        # every ratio reads "times faster than transformers"
        row["speedup"] = {
            "ttft": hf["ttft_ms"] / ours["ttft_ms"],
            "ms_per_step": hf["ms_per_step"] / ours["ms_per_step"],
            "decode_tok_per_s": ours["decode_tok_per_s"] / hf["decode_tok_per_s"],
            "decode_tok_per_cpu_s": ours["decode_tok_per_cpu_s"] / hf["decode_tok_per_cpu_s"],
        }
        compare_rows.append(row)

    print0(
        f"nanochat Engine vs transformers generate, greedy, prompt {args.prompt_len} + {args.decode_tokens} tokens, "
        f"median of {args.repeats} alternating runs:"
    )
    header = f"{'batch':>5} {'engine':<13} {'TTFT ms':>9} {'ms/step':>8} {'decode tok/s':>13} {'tok/CPU-s':>10}"
    print0(header)
    print0("-" * len(header))
    for row in compare_rows:
        for name in ("nanochat", "transformers"):
            s = row[name]
            print0(
                f"{row['batch_size']:>5} {name:<13} {s['ttft_ms']:>9.1f} {s['ms_per_step']:>8.2f} "
                f"{s['decode_tok_per_s']:>13,.0f} {s['decode_tok_per_cpu_s']:>10,.0f}"
            )
        x = row["speedup"]
        print0(
            f"{'':>5} {'speedup':<13} {x['ttft']:>8.2f}x {x['ms_per_step']:>7.2f}x "
            f"{x['decode_tok_per_s']:>12.2f}x {x['decode_tok_per_cpu_s']:>9.2f}x"
        )
    hf_compare = {
        "transformers_version": transformers.__version__,
        "export_kind": export_info["kind"],
        "hf_class": type(hf_model).__name__,
        "hf_dtype": hf_dtype,
        "sampling": "greedy",
        "repeats": args.repeats,
        "max_abs_logit_diff": max_logit_diff,
        "greedy_match": greedy["match"],
        "greedy_tokens_checked": greedy["tokens"],
        "greedy_first_mismatch": greedy["first_mismatch"],
        "rows": compare_rows,
    }
    del hf_model
    tmp_dir.cleanup()

# -----------------------------------------------------------------------------
# Summary

summary = {**card, "prefill": prefill, "decode_tokens": args.decode_tokens, "decode": decode}
if hf_compare is not None:
    summary["hf_compare"] = hf_compare
print0(json.dumps(summary))
