"""miniseries.sh end to end on CPU at depth 1 (CSV, fits, plots, summary, commands.sh from checkpoint metadata), a
rerun that skips the finished depth, an unfinished depth left out, and the power-law fit on known data."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from nanochat.checkpoint_manager import find_last_step, meta_path, read_meta
from nanochat.common import REPO_DIR
from scripts.miniseries_report import fit_power_law


def test_fit_power_law_recovers_known_law():
    """y = 3 x^-0.1 comes back exactly; non-positive points are left out and counted; < 2 points give no fit."""
    x = [1e10, 1e11, 1e12, 1e13]
    a, b, n = fit_power_law(x, [3 * xi**-0.1 for xi in x])
    assert math.isclose(a, 3, rel_tol=1e-9) and math.isclose(b, -0.1, rel_tol=1e-9) and n == 4
    assert fit_power_law(x, [-0.1, 0.2, None, 0.3])[2] == 2
    assert fit_power_law(x, [-0.1, 0.2, None, -0.3]) is None


def run_miniseries(base, out, *args):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "miniseries.sh", *args],
        check=False,
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def series(tmp_path_factory, tiny_tokenizer):
    """`bash miniseries.sh 1 t` with a tokenizer already in the base dir (as speedrun.sh or runcpu.sh leave it)."""
    base, out = tmp_path_factory.mktemp("base"), tmp_path_factory.mktemp("ms") / "out"
    tiny_tokenizer.save(str(base / "tokenizer"))
    stdout = run_miniseries(base, out, "1", "t")
    return base, out, stdout


def test_miniseries_writes_csv_plots_summary_and_commands(series):
    """One CSV row per finished depth with the numbers of its final checkpoint; plots, fits, summary, commands."""
    base, out, stdout = series
    ckpt = base / "base_checkpoints" / "t_d1"
    meta = read_meta(str(ckpt), find_last_step(str(ckpt)))
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row, h = rows[0], meta["hparams"]
    assert int(row["depth"]) == 1 and int(row["params"]) == h["num_params"]
    assert int(row["scaling_params"]) == h["num_scaling_params"] and int(row["tokens"]) == h["train_tokens"]
    assert float(row["flops"]) == h["train_flops"] > 0 and int(row["iterations"]) == meta["step"]
    assert float(row["val_bpb"]) == meta["val_bpb"] and float(row["core"]) == meta["core_results"]["core"]
    assert float(row["mfu_percent"]) > 0 and float(row["mean_tok_per_s"]) > 0 and float(row["train_time_s"]) > 0
    section = json.loads((base / "report" / "base-model-training.json").read_text())["data"]  # the report card's
    assert section["CORE"] == meta["core_results"]["core"] and section["training tokens"] == h["train_tokens"]
    assert section["ran on"].startswith("1 x ") and "(cpu), float32, attention sdpa, compile False" in section["ran on"]
    per_task = {label: r["centered"] for label, r in meta["core_results"]["results"].items()}
    assert len(per_task) == 22 and all(section[f"CORE {label}"] == v for label, v in per_task.items())
    for png in ("bpb_vs_flops.png", "core_vs_flops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "fits.json").read_text()) == {"val_bpb": None, "core": None}  # one point: no fit
    summary = (out / "summary.md").read_text()
    assert "| 1 | 64 |" in summary and "[commands.sh](commands.sh)" in summary
    commands = (out / "commands.sh").read_text().splitlines()
    assert commands[0].startswith("# ") and commands[0].endswith("bash miniseries.sh 1 t")
    assert "scripts.tok_train" not in "".join(commands)  # the tokenizer was there
    assert any("python -m scripts.base_train --depth=1 --model-tag=t_d1" in c for c in commands)
    assert "=== d1" in stdout and re.search(r"step \d+ \| CORE", (out / "train_d1.log").read_text())


def test_rerun_skips_finished_and_leaves_out_unfinished(series):
    """A rerun trains nothing for a finished depth; a depth whose last checkpoint is not final is left out."""
    base, out, _ = series
    done, partial = base / "base_checkpoints" / "t_d1", base / "base_checkpoints" / "t_d2"
    shutil.copytree(done, partial)  # fake an interrupted d2: its last checkpoint is short of num_iterations
    step = find_last_step(str(partial))
    meta = read_meta(str(partial), step)
    meta["hparams"]["num_iterations"] = step + 10
    with open(meta_path(str(partial), step), "w") as f:
        json.dump(meta, f)
    log_before = (out / "train_d1.log").read_text()
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base)}
    check = [sys.executable, "-m", "scripts.miniseries_report", "--series", "t", "--depths", "1", "--out", str(out)]
    assert subprocess.run([*check, "--check", "1"], check=False, cwd=REPO_DIR, env=env).returncode == 0
    assert subprocess.run([*check, "--check", "2"], check=False, cwd=REPO_DIR, env=env).returncode == 1

    stdout = run_miniseries(base, out, "1", "t")
    assert "d1: already done, skipping" in stdout and "=== d1" not in stdout
    assert (out / "train_d1.log").read_text() == log_before
    commands = (out / "commands.sh").read_text()
    assert commands.count("scripts.base_train") == 1 and commands.count("bash miniseries.sh 1 t") == 2

    report = subprocess.run(
        [*check[:-4], "--depths", "1,2", "--out", str(out)],
        check=False,
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "not finished (left out): depths [2]" in report.stdout
