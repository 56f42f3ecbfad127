"""scripts/base_train end to end on a tiny model: loss goes down, exact resume, 2-process torchrun == 1 process."""

import argparse
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import PACKAGE_DATA_DIR, REPO_DIR
from nanochat.tokenizer import Tokenizer

# d2, 64 wide (2 heads of 32), T = 32, 2 rows per micro-step, 2 micro-batches per step (1 process x 2 accumulation
# steps, or 2 processes x 1). The batch is 2^12 times smaller than the dial's reference, so the LR scale is tiny:
# the base LRs are raised to give about the reference's effective LRs.
STEPS = 8
COMMON = [
    "--depth=2", "--aspect-ratio=32", "--head-dim=32", "--max-seq-len=32", "--window-pattern=L",
    "--device-batch-size=2", "--total-batch-size=128", f"--num-iterations={STEPS}", "--warmup-steps=2",
    "--matrix-lr=1.0", "--embedding-lr=4.0", "--unembedding-lr=0.1", "--scalar-lr=8.0",
    "--eval-every=4", "--eval-tokens=512", "--core-metric-every=-1", "--sample-every=-1", "--device-type=cpu",
]  # fmt: skip


def english_text(max_chars=200_000):
    """Real English: the embedded sample shard when present, else the docstrings of a few stdlib modules."""
    shard_dir = os.path.join(PACKAGE_DATA_DIR, "sample_shards")
    files = sorted(f for f in os.listdir(shard_dir) if f.endswith(".parquet")) if os.path.isdir(shard_dir) else []
    if files:
        texts = pq.ParquetFile(os.path.join(shard_dir, files[0])).read_row_group(0).column("text").to_pylist()
    else:
        mods = (argparse, collections, json, pathlib, subprocess)
        texts = [obj.__doc__ or "" for m in mods for obj in (m, *vars(m).values()) if isinstance(obj.__doc__, str)]
    return " ".join(texts)[:max_chars]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A base dir with a ~300-token tokenizer and 3 train + 1 val parquet files of short documents."""
    base = tmp_path_factory.mktemp("base")
    text = english_text()
    docs = [text[i : i + 400] for i in range(0, len(text) - 400, 400)]
    Tokenizer.train_from_iterator(iter(docs), 300).save(str(base / "tokenizer"))
    data_dir = base / "data"
    data_dir.mkdir()
    per_file = max(len(docs) // 4, 8)
    for f in range(4):
        chunk = docs[f * per_file : (f + 1) * per_file] or docs[:per_file]
        pq.write_table(pa.table({"text": chunk}), str(data_dir / f"shard_{f:05d}.parquet"), row_group_size=32)
    return base


def run(base, args, nproc=1, expect_ok=True):
    env = {
        **os.environ,
        "NANOCHAT_BASE_DIR": str(base),
        "NANOCHAT_DATA_DIR": str(base / "data"),
        "OMP_NUM_THREADS": "1",
    }
    if nproc == 1:
        cmd = [sys.executable, "-m", "scripts.base_train", *args]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "scripts.base_train", *args]
    out = subprocess.run(cmd, check=False, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout if expect_ok else out


def read_meta(base, tag, step):
    with open(base / "base_checkpoints" / tag / f"meta_{step:06d}.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def single(base_dir):
    """One uninterrupted 1-process run, checkpoints at the midpoint and at the end."""
    stdout = run(base_dir, [*COMMON, "--model-tag=single", f"--save-every={STEPS // 2}"])
    return stdout, read_meta(base_dir, "single", STEPS)


def test_loss_decreases_and_log_is_dense(single):
    """Train loss and val bpb fall over 8 steps; the dial table and one dense log line per step are printed."""
    stdout, meta = single
    losses = meta["metrics"]["train_loss"]
    assert len(losses) == STEPS
    assert sum(losses[-2:]) / 2 < losses[0] - 0.2, losses
    val = meta["metrics"]["val_bpb"]
    assert [s for s, _ in val] == [0, 4, 8] and val[-1][1] < val[0][1], val
    assert "N scaling" in stdout and "Muon weight decay" in stdout
    step_lines = [line for line in stdout.splitlines() if line.startswith("step ") and "tok/s" in line]
    assert len(step_lines) == STEPS
    for key in ("loss", "lrm", "dt", "tok/s", "mfu", "flops", "elapsed", "eta"):
        assert key in step_lines[-1]


def test_checkpoint_meta_contents(single):
    """The meta file describes the run: config, hparams, loop/data/RNG state, metrics, git, format version."""
    _, meta = single
    assert meta["step"] == STEPS and meta["format_version"] == 1 and "commit" in meta["git"]
    assert meta["model_config"]["n_layer"] == 2 and meta["model_config"]["n_embd"] == 64
    assert meta["user_config"]["depth"] == 2 and meta["hparams"]["num_iterations"] == STEPS
    assert meta["total_batch_size"] == 128 and meta["grad_accum_steps"] == 2 and meta["world_size"] == 1
    assert len(meta["dataloader_state"]) == 2  # one state per micro-batch slice
    assert set(meta["rng_state"]) >= {"python", "numpy", "torch_cpu"}
    assert set(meta["loop_state"]) == {"smooth_train_loss", "total_training_time"}
    assert meta["val_bpb"] == meta["metrics"]["val_bpb"][-1][1]
    assert meta["run_info"]["mean_tok_per_sec"] > 0 and "GEMM" in meta["run_info"]["mfu_basis"]


def test_checkpoint_meta_describes_data_hardware_and_optimizer(base_dir, single):
    """Meta has the data files, tokens seen, hardware, wall time, kernels and one entry per optimizer group."""
    _, meta = single
    assert meta["data"]["data_dir"] == str(base_dir / "data") and meta["data"]["dataset"] == "parquet folder data"
    assert meta["data"]["train_files"] == [f"shard_{i:05d}.parquet" for i in range(3)]
    assert meta["data"]["val_file"] == "shard_00003.parquet"
    assert meta["tokens_seen"] == STEPS * 128
    run_info = meta["run_info"]
    assert run_info["device_count"] == 1 and run_info["device_type"] == "cpu" and run_info["dtype"] == "float32"
    assert run_info["wall_time_s"] > meta["loop_state"]["total_training_time"] and "GiB" in run_info["peak_memory"]
    assert run_info["attention"] == "sdpa" and run_info["fp8_layers"] == 0 and run_info["ce_chunk_rows"] == 4096
    assert meta["user_config"]["fp8"] is False and meta["user_config"]["ce_chunk_rows"] == 4096
    groups = meta["optimizer"]
    assert [g["name"] for g in groups[:5]] == ["lm_head.weight", "wte.weight", "value_embeds.*.weight",
                                               "resid_lambdas", "x0_lambdas"]  # fmt: skip
    assert {g["kind"] for g in groups[5:]} == {"muon"} and all("momentum" in g for g in groups[5:])
    assert groups[0]["betas"] == [0.8, 0.96] and groups[0]["scheduled"] == ["lr"]
    assert groups[-1]["scheduled"] == ["lr", "momentum", "weight_decay"]
    assert sum(g["num_params"] for g in groups) == meta["hparams"]["num_params"]
    # an intermediate checkpoint records what was known then
    mid = read_meta(base_dir, "single", STEPS // 2)
    assert mid["tokens_seen"] == STEPS // 2 * 128 and 0 < mid["run_info"]["wall_time_s"] < run_info["wall_time_s"]


def test_fp8_on_cpu_fails_with_the_reason(base_dir):
    """--fp8 where FP8 GEMMs cannot run stops at once and says why."""
    out = run(base_dir, [*COMMON, "--fp8", "--model-tag=fp8"], expect_ok=False)
    assert out.returncode != 0 and "--fp8 cannot run here: FP8 training needs a CUDA GPU" in out.stderr


def test_resume_is_bit_exact(base_dir, single):
    """Resuming the step-4 checkpoint gives the same losses, bit for bit, as the uninterrupted run."""
    _, meta = single
    shutil.copytree(base_dir / "base_checkpoints" / "single", base_dir / "base_checkpoints" / "resumed")
    os.remove(base_dir / "base_checkpoints" / "resumed" / f"meta_{STEPS:06d}.json")  # only step 4 is left to resume
    stdout = run(base_dir, [*COMMON, "--model-tag=resumed", "--resume-from-step=latest"])
    assert f"step {STEPS // 2}" in stdout
    resumed = read_meta(base_dir, "resumed", STEPS)
    assert resumed["metrics"]["train_loss"] == meta["metrics"]["train_loss"]
    assert resumed["metrics"]["val_bpb"] == meta["metrics"]["val_bpb"]


def test_two_process_torchrun_matches_one_process(base_dir, single):
    """torchrun with 2 CPU processes (gloo) sees the same data and gives the same losses and val bpb up to rounding."""
    _, meta = single
    run(base_dir, [*COMMON, "--model-tag=ddp"], nproc=2)
    ddp = read_meta(base_dir, "ddp", STEPS)
    assert ddp["world_size"] == 2 and ddp["grad_accum_steps"] == 1
    assert ddp["metrics"]["train_loss"] == pytest.approx(meta["metrics"]["train_loss"], rel=1e-5)
    ddp_val, single_val = (dict(m["metrics"]["val_bpb"]) for m in (ddp, meta))
    assert ddp_val == pytest.approx(single_val, rel=1e-5)


def test_batch_that_does_not_divide_fails_with_the_numbers(base_dir):
    """A total batch that is no whole number of micro-batches stops at once with the arithmetic in the message."""
    out = run(base_dir, [*COMMON, "--total-batch-size=96", "--model-tag=bad"], expect_ok=False)
    assert out.returncode != 0
    assert "total batch 96 tokens is not a multiple of device batch 2 rows x 32 tokens x 1 processes" in out.stderr
