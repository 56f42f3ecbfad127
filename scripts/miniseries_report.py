"""
Collect a miniseries (one base model per depth, each trained compute-optimally by the dial) into one CSV, fit
power laws across depths and draw them: val bpb vs training FLOPs and CORE vs training FLOPs.

Everything is read from each model's final checkpoint metadata (never parsed from logs):
    python -m scripts.miniseries_report --series cpu --depths 2,3,4,5,6 --out dev/miniseries_cpu
Writes OUT/results.csv, OUT/fits.json, OUT/bpb_vs_flops.png, OUT/core_vs_flops.png, OUT/summary.md.
`--check N` only answers (exit 0 or 1) whether depth N's final checkpoint exists: miniseries.sh skips those.
"""

import argparse
import csv
import json
import math
import os

import numpy as np

from nanochat.checkpoint_manager import find_last_step, read_meta
from nanochat.common import get_base_dir

COLUMNS = [
    "depth", "n_embd", "params", "scaling_params", "tokens", "tokens_per_param", "flops", "total_batch",
    "iterations", "val_bpb", "core", "train_time_s", "mean_tok_per_s", "mfu_percent", "device",
]  # fmt: skip


def series_tag(series, depth):
    return f"{series}_d{depth}"


def collect_row(ckpt_dir, depth):
    """One CSV row from the final checkpoint of a run, or None when the run has not finished (or not started)."""
    try:
        step = find_last_step(ckpt_dir)
    except FileNotFoundError:  # no directory, or no complete checkpoint in it yet
        return None
    meta = read_meta(ckpt_dir, step)
    h = meta["hparams"]
    if step != h["num_iterations"]:
        return None  # an interrupted run: its last checkpoint is not the final one
    run = meta.get("run_info", {})
    core = meta.get("core_results") or {}
    return {
        "depth": depth,
        "n_embd": h["n_embd"],
        "params": h["num_params"],
        "scaling_params": h["num_scaling_params"],
        "tokens": h["train_tokens"],
        "tokens_per_param": round(h["train_tokens"] / h["num_scaling_params"], 3),
        "flops": h["train_flops"],
        "total_batch": h["total_batch_size"],
        "iterations": h["num_iterations"],
        "val_bpb": meta["val_bpb"],
        "core": core.get("core"),
        "train_time_s": round(meta["loop_state"]["total_training_time"], 1),
        "mean_tok_per_s": run.get("mean_tok_per_sec"),
        "mfu_percent": run.get("mfu_percent"),
        "device": run.get("device_name"),
    }


def fit_power_law(x, y):
    """y = a * x^b by least squares in log-log space over the points with x, y > 0: (a, b, points used), or None
    with fewer than 2 such points."""
    pts = [(xi, yi) for xi, yi in zip(x, y) if xi is not None and yi is not None and xi > 0 and yi > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, log_a = np.polyfit(lx, ly, 1)
    return float(math.exp(log_a)), float(b), len(pts)


def plot(rows, key, ylabel, path, fit):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["flops"], r[key], r["depth"]) for r in rows if r[key] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3)
    for x, y, d in pts:
        ax.annotate(f"d{d}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if fit:
        xs = np.logspace(np.log10(min(p[0] for p in pts)), np.log10(max(p[0] for p in pts)), 50)
        ax.plot(xs, fit[0] * xs ** fit[1], "--", label=f"fit: {fit[0]:.3g} * C^{fit[1]:.3f} ({fit[2]} points)")
        ax.legend()
    ax.set_xscale("log")
    if all(p[1] > 0 for p in pts):
        ax.set_yscale("log")  # a power law is a straight line in log-log
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    if key == "core":
        ax.axhline(0.0, color="gray", lw=0.8, label="chance (CORE is centered)")
        ax.legend()
    ax.set_xlabel("training FLOPs (C)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", required=True, help="series name: checkpoints are base_checkpoints/<series>_d<N>")
    parser.add_argument("--depths", required=True, help="comma-separated depths, e.g. 2,3,4,5,6")
    parser.add_argument("--out", required=True, help="output folder for the CSV, plots and summary")
    parser.add_argument("--check", type=int, default=None, help="only exit 0 if depth N has finished (for reruns)")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    ckpt_root = os.path.join(get_base_dir(), "base_checkpoints")

    if args.check is not None:  # used by miniseries.sh to skip depths already done
        raise SystemExit(0 if collect_row(os.path.join(ckpt_root, series_tag(args.series, args.check)), 0) else 1)

    rows, missing = [], []
    for d in depths:
        row = collect_row(os.path.join(ckpt_root, series_tag(args.series, d)), d)
        (rows.append(row) if row else missing.append(d))
    assert rows, f"no finished runs for series {args.series!r} and depths {depths} under {ckpt_root}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    bpb_fit = fit_power_law([r["flops"] for r in rows], [r["val_bpb"] for r in rows])
    core_fit = fit_power_law([r["flops"] for r in rows], [r["core"] for r in rows])
    plot(rows, "val_bpb", "val bits per byte", os.path.join(args.out, "bpb_vs_flops.png"), bpb_fit)
    plot(rows, "core", "CORE", os.path.join(args.out, "core_vs_flops.png"), core_fit)

    lines = [f"# Miniseries `{args.series}`", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, fit in (("val bpb", bpb_fit), ("CORE", core_fit)):
        if fit:
            lines.append(f"- {name} ~ {fit[0]:.4g} * C^{fit[1]:.4f} (least squares in log-log over {fit[2]} depths)")
    if not core_fit and any(r["core"] is not None for r in rows):
        lines.append(
            "- CORE: no power-law fit (it needs CORE > 0 at two or more depths; these models score at or below chance)"
        )
    if missing:
        lines.append(f"- not finished (left out): depths {missing}")
    if os.path.exists(os.path.join(args.out, "commands.sh")):
        lines.append("- the commands that made these runs: [commands.sh](commands.sh)")
    lines += ["", "![val bpb vs FLOPs](bpb_vs_flops.png) ![CORE vs FLOPs](core_vs_flops.png)", ""]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(args.out, "fits.json"), "w") as f:
        fits = {
            name: dict(zip(("a", "b", "points"), fit)) if fit else None
            for name, fit in (("val_bpb", bpb_fit), ("core", core_fit))
        }
        json.dump(fits, f, indent=2)  # y = a * C^b
    print("\n".join(lines))


if __name__ == "__main__":
    main()
