"""The inference benchmark end to end: a random 1-layer model against its own HuggingFace export (--hf-compare).
Random models need no tokenizer on disk (bench_infer builds a byte-level one), so the base dir stays empty."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from nanochat.common import REPO_DIR

if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed (pip install transformers)", allow_module_level=True)

BATCH_SIZES = [1, 2]
METRICS = ["ttft_ms", "ms_per_step", "decode_tok_per_s", "decode_tok_per_cpu_s"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny `--hf-compare` run (offline, single-threaded): its stdout lines and its final JSON line."""
    tmp = tmp_path_factory.mktemp("bench_infer")
    env = {
        **os.environ,
        "NANOCHAT_BASE_DIR": str(tmp / "base"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp / "hf_modules"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "scripts.bench_infer", "--depth", "1", "--vocab-size", "320", "--sequence-len", "64",
        "--prompt-len", "16", "--decode-tokens", "8", "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--repeats", "2", "--num-threads", "1", "--device-type", "cpu", "--hf-compare",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"bench_infer failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_table_has_both_engines_per_batch_size(bench_run):
    """The comparison table prints a nanochat row, a transformers row and a speedup row for every batch size."""
    lines, _ = bench_run
    start = next(i for i, line in enumerate(lines) if line.startswith("nanochat Engine vs transformers generate"))
    table = [line.split() for line in lines[start + 3 : start + 3 + 3 * len(BATCH_SIZES)]]
    for i, batch_size in enumerate(BATCH_SIZES):
        ours, hf, speedup = table[3 * i : 3 * i + 3]
        assert ours[:2] == [str(batch_size), "nanochat"] and len(ours) == 6, ours
        assert hf[:2] == [str(batch_size), "transformers"] and len(hf) == 6, hf
        assert speedup[0] == "speedup" and all(x.endswith("x") for x in speedup[1:]), speedup


def test_json_holds_both_engines_numbers(bench_run):
    """The final JSON line carries, per batch size, finite positive TTFT/decode numbers for both engines."""
    _, summary = bench_run
    compare = summary["hf_compare"]
    assert compare["export_kind"] == "custom" and compare["hf_dtype"] == "float32"
    assert compare["repeats"] == 2 and compare["sampling"] == "greedy"
    assert [row["batch_size"] for row in compare["rows"]] == BATCH_SIZES
    for row in compare["rows"]:
        for engine in ("nanochat", "transformers"):
            for key in METRICS:
                value = row[engine][key]
                assert math.isfinite(value) and value > 0, (row["batch_size"], engine, key, value)
        assert set(row["speedup"]) == {"ttft", "ms_per_step", "decode_tok_per_s", "decode_tok_per_cpu_s"}
    assert [row["batch_size"] for row in summary["decode"]] == BATCH_SIZES  # the plain sweep still runs


def test_greedy_tokens_match(bench_run):
    """The export computes our function: same prompt logits (fp32) and the same greedy tokens for row 0."""
    lines, summary = bench_run
    compare = summary["hf_compare"]
    assert compare["greedy_match"] is True and compare["greedy_first_mismatch"] is None
    assert compare["greedy_tokens_checked"] == 8
    assert compare["max_abs_logit_diff"] <= 1e-4
    assert any(line.startswith("greedy check: row 0 identical for all 8 tokens") for line in lines)
