"""Report card: the environment header (git commit and dirty flag, hardware, torch/CUDA, cost basis), sections in
pipeline order whatever order they were logged in, the summary table by stage, total time and cost; the CLI."""

import datetime
import json
import os
import subprocess
import sys

from nanochat.common import REPO_DIR
from nanochat.report import Report, estimate_hourly_cost, get_git_info


def test_cost_estimate_by_gpu_kind():
    """8 H100s at the list price; an unknown GPU at the stated assumption; a CPU machine costs nothing and says so."""
    gpus = [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.1}] * 8
    assert estimate_hourly_cost({"gpus": gpus, "gpu_count": 8}) == (
        24.0,
        "8 x NVIDIA H100 80GB HBM3 at $3.00/GPU-hour (list price)",
    )
    usd, how = estimate_hourly_cost({"gpus": [{"name": "Mystery GPU"}], "gpu_count": 1})
    assert usd == 2.0 and "assumed" in how
    assert estimate_hourly_cost({"gpus": [], "gpu_count": 0})[0] == 0.0


def test_report_card_end_to_end(tmp_path):
    """reset -> sections logged out of order -> generate: header, ordered sections, summary by stage, total time."""
    report = Report(str(tmp_path / "report"))
    (tmp_path / "report" / "stale.md").write_text("from an earlier run")
    header = report.reset()
    assert not (tmp_path / "report" / "stale.md").exists()  # reset starts a new run
    git = get_git_info()
    assert header["git"] == git and len(git["commit"]) == 12 and isinstance(git["dirty"], bool)
    assert header["hardware"]["torch"] and header["hardware"]["cpu_count"] >= 1
    assert header["bloat"]["lines"] > 1000

    # pretend the run started an hour ago on 8 GPUs at $24/h, to check the total time and cost arithmetic
    header["started"] = (datetime.datetime.now() - datetime.timedelta(hours=1)).isoformat(timespec="seconds")
    header["hourly_cost_usd"] = 24.0
    (tmp_path / "report" / "header.json").write_text(json.dumps(header))

    report.log("Chat evaluation sft", [{"ARC-Easy": 0.5, "MMLU": 0.25, "GSM8K": 0.0625, "ChatCORE": 0.1}])
    report.log("Tokenizer training", [{"vocab_size": 512, "train_chars": 12345}])
    report.log("Base model training", [{"depth": 2, "MFU %": 41.5, "CORE": 0.11}])
    report.log("Base model evaluation", [{"CORE": 0.12, "hellaswag_zeroshot": 0.3}, "| a | table |"])
    report.log("Chat evaluation mid", [{"ARC-Easy": 0.375, "ChatCORE": 0.05}])
    path = report.generate(copy_to_cwd=False)
    with open(path, encoding="utf-8") as f:
        text = f.read()

    assert f"- git: commit {git['commit']} on {git['branch']}, dirty: {git['dirty']}" in text
    assert f"torch {header['hardware']['torch']}" in text and f"CUDA {header['hardware']['cuda']}" in text
    order = [text.index(f"## {s}") for s in ("Tokenizer training", "Base model training", "Base model evaluation",
                                             "Chat evaluation mid", "Chat evaluation sft")]  # fmt: skip
    assert order == sorted(order)
    assert "- MFU %: 41.5" in text and "| a | table |" in text and "- hellaswag_zeroshot: 0.3" in text
    summary = text[text.index("## Summary") :]
    assert "| Metric | BASE | MID | SFT |" in summary
    assert "| CORE | 0.1200 | - | - |" in summary  # base_eval's CORE wins over base_train's
    assert "| ARC-Easy | - | 0.3750 | 0.5000 |" in summary and "| ChatCORE | - | 0.0500 | 0.1000 |" in summary
    assert "| HumanEval |" not in summary  # measured by no stage: no row
    total = next(line for line in text.splitlines() if line.startswith("Total wall clock time"))
    seconds = float(total.split("(")[1].split(" s)")[0])
    assert 3600 <= seconds < 3660 and "1.0" in total.split(" h ")[0]
    assert abs(float(total.split("$")[1]) - 24.0 * seconds / 3600) < 0.01


def test_report_cli(tmp_path):
    """`python -m nanochat.report reset|generate` works in a base dir and copies report.md to the current folder."""
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    run = [sys.executable, "-m", "nanochat.report"]
    for command in ("reset", "generate"):
        proc = subprocess.run([*run, command], check=False, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.md").read_text().startswith("# nanochat report card\n\n## Environment")
    assert (tmp_path / "base" / "report" / "report.md").exists()
    bad = subprocess.run([*run, "publish"], check=False, cwd=REPO_DIR, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "usage: python -m nanochat.report {reset|generate}" in bad.stderr
