"""
The post-training stages end to end on CPU, as subprocesses: a tiny base model from scripts.base_train, then
mid_train (one epoch of the fixture mixture), chat_sft, chat_rl and chat_eval on the task fixtures. Each training
stage saves, and a run resumed from its midpoint checkpoint reproduces the uninterrupted run exactly.
"""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import PACKAGE_DATA_DIR, REPO_DIR

FIXTURES = os.path.join(PACKAGE_DATA_DIR, "tasks")
# d2, 64 wide, T = 128 (the fixtures' prompts are up to ~120 tokens with a 512-token vocab), 2 rows x 2 micro-steps
BASE_ARGS = [
    "--depth=2", "--aspect-ratio=32", "--head-dim=32", "--max-seq-len=128", "--window-pattern=L",
    "--device-batch-size=2", "--total-batch-size=512", "--num-iterations=2", "--warmup-steps=1", "--eval-every=-1",
    "--eval-tokens=512", "--core-metric-every=-1", "--sample-every=-1", "--device-type=cpu", "--model-tag=tiny",
]  # fmt: skip
MID_ARGS = [
    "--device-type=cpu", "--source-tag=tiny", "--spellingbee-size=20", "--num-iterations=-1", "--eval-every=5",
    "--eval-tokens=512", "--save-every=5",
]  # fmt: skip
SFT_ARGS = [
    "--device-type=cpu", "--source-tag=mid", "--spellingbee-size=20", "--num-iterations=4", "--eval-every=2",
    "--eval-tokens=512", "--chat-eval-every=2", "--chat-eval-max-problems=3", "--save-every=2",
]  # fmt: skip
RL_ARGS = [
    "--device-type=cpu", "--source-tag=sft", "--examples-per-step=2", "--num-samples=2", "--device-batch-size=2",
    "--max-new-tokens=8", "--num-iterations=4", "--eval-every=2", "--eval-examples=2", "--eval-samples=2",
    "--save-every=2",
]  # fmt: skip


def run(base, module, args):
    env = {
        **os.environ,
        "NANOCHAT_BASE_DIR": str(base),
        "NANOCHAT_DATA_DIR": str(base / "data"),
        "NANOCHAT_TASK_DIR": FIXTURES,
        "OMP_NUM_THREADS": "1",  # two threads on a busy 2-core machine are many times slower than one
        "WANDB_MODE": "disabled",
    }
    cmd = [sys.executable, "-m", module, *args]
    out = subprocess.run(cmd, check=False, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


def read_meta(base, phase_dir, tag, step):
    with open(base / phase_dir / tag / f"meta_{step:06d}.json") as f:
        return json.load(f)


def last_step(base, phase_dir, tag):
    return max(int(name[5:11]) for name in os.listdir(base / phase_dir / tag) if name.startswith("meta_"))


def resume_copy(base, phase_dir, tag, step):
    """A copy of a run's directory holding only its checkpoint of `step`, to resume from."""
    src, dst = base / phase_dir / tag, base / phase_dir / f"{tag}_resumed"
    dst.mkdir()
    for name in os.listdir(src):
        if f"_{step:06d}" in name:
            shutil.copy(src / name, dst / name)
    return f"{tag}_resumed"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    """A base dir with the 512-token test tokenizer, 3 tiny parquet shards and a 2-step d2 base model."""
    base = tmp_path_factory.mktemp("chat_stages")
    tiny_tokenizer.save(str(base / "tokenizer"))
    (base / "data").mkdir()
    text = "The quick brown fox jumps over the lazy dog, and then it sleeps in the sun all day long. " * 40
    docs = [text[i : i + 300] for i in range(300)]
    for f in range(3):
        chunk = pa.table({"text": docs[f * 100 : (f + 1) * 100]})
        pq.write_table(chunk, str(base / "data" / f"s_{f}.parquet"), row_group_size=25)
    run(base, "scripts.base_train", BASE_ARGS)
    return base


@pytest.fixture(scope="module")
def mid(base):
    """One epoch of midtraining (checkpoints every 5 steps) and its stdout."""
    stdout = run(base, "scripts.mid_train", [*MID_ARGS, "--model-tag=mid"])
    return stdout, read_meta(base, "mid_checkpoints", "mid", last_step(base, "mid_checkpoints", "mid"))


def test_mid_train_runs_one_epoch_and_resumes_exactly(base, mid):
    """Mid stops after one epoch of the mixture; resuming step 5 reproduces every later loss and val bpb exactly."""
    stdout, meta = mid
    steps = meta["step"]
    assert steps > 5 and len(meta["metrics"]["train_loss"]) == steps
    assert meta["parent"] == {"source": "base", "model_tag": "tiny", "step": 2}
    shares = [len(range(s["rank"], s["num_examples"], s["world_size"])) for s in meta["dataloader_state"]]
    progress = [s["placed"] / share for s, share in zip(meta["dataloader_state"], shares)]
    assert max(progress) >= 1.0 > min(progress) - 0.5, progress  # stopped at the end of the first epoch
    assert "val bpb" in stdout and "assistant tokens" in stdout
    tag = resume_copy(base, "mid_checkpoints", "mid", 5)
    run(base, "scripts.mid_train", [*MID_ARGS, f"--model-tag={tag}", "--resume-from-step=5"])
    resumed = read_meta(base, "mid_checkpoints", tag, steps)
    assert resumed["metrics"] == meta["metrics"]
    assert resumed["dataloader_state"] == meta["dataloader_state"]
    with open(base / "report" / "midtraining.json") as f:
        assert json.load(f)["data"]["iterations"] == steps


@pytest.fixture(scope="module")
def sft(base, mid):
    run(base, "scripts.chat_sft", [*SFT_ARGS, "--model-tag=sft"])
    return read_meta(base, "chatsft_checkpoints", "sft", 4)


def test_chat_sft_warm_starts_from_mid_and_resumes_exactly(base, sft):
    """SFT loads mid's weights and optimizer state, runs chat evals, and 2 steps + resume + 2 steps == 4 steps."""
    assert sft["parent"]["source"] == "mid" and sft["optimizer_source"].startswith("mid mid step")
    assert len(sft["metrics"]["train_loss"]) == 4
    chat_steps = [s for s, _ in sft["metrics"]["chat_eval"]]
    assert chat_steps == [2, 4] and set(sft["metrics"]["chat_eval"][-1][1]) == {
        "ARC-Easy", "ARC-Challenge", "MMLU", "ChatCORE_cat"
    }  # fmt: skip
    tag = resume_copy(base, "chatsft_checkpoints", "sft", 2)
    run(base, "scripts.chat_sft", [*SFT_ARGS, f"--model-tag={tag}", "--resume-from-step=2"])
    resumed = read_meta(base, "chatsft_checkpoints", tag, 4)
    assert resumed["metrics"] == sft["metrics"]


@pytest.fixture(scope="module")
def rl(base, sft):
    stdout = run(base, "scripts.chat_rl", [*RL_ARGS, "--model-tag=rl"])
    return stdout, read_meta(base, "chatrl_checkpoints", "rl", 4)


def test_chat_rl_saves_and_resumes_with_identical_steps(base, rl):
    """RL logs reward and pass@k, saves model + optimizer, and a resumed run gives identical steps and weights."""
    stdout, meta = rl
    assert len(meta["metrics"]["reward"]) == 4 and [s for s, _ in meta["metrics"]["pass_at_k"]] == [0, 2, 4]
    assert set(meta["metrics"]["pass_at_k"][-1][1]) == {"pass@1", "pass@2"}
    assert os.path.exists(base / "chatrl_checkpoints" / "rl" / "optim_000004_rank0.pt")
    assert "reward" in stdout and "pass@2" in stdout
    tag = resume_copy(base, "chatrl_checkpoints", "rl", 2)
    run(base, "scripts.chat_rl", [*RL_ARGS, f"--model-tag={tag}", "--resume-from-step=2"])
    resumed = read_meta(base, "chatrl_checkpoints", tag, 4)
    assert resumed["metrics"] == meta["metrics"]
    a = torch.load(base / "chatrl_checkpoints" / "rl" / "model_000004.pt", weights_only=True)
    b = torch.load(base / "chatrl_checkpoints" / tag / "model_000004.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def evaluated(base, rl):
    """chat_eval on the RL checkpoint (2 problems per task): its stdout."""
    return run(base, "scripts.chat_eval", ["-i", "rl", "-g", "rl", "-x", "2", "-m", "8", "--device-type=cpu"])


def test_chat_eval_writes_csv_json_meta_and_report(base, evaluated):
    """chat_eval scores all six tasks and ChatCORE into the CSV/JSON, the checkpoint meta and the report."""
    names = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]
    assert "ChatCORE:" in evaluated
    with open(base / "chat_eval" / "rl_rl_000004.json") as f:
        results = json.load(f)["results"]
    assert list(results) == names and all(-1 <= v <= 1 for v in results.values())
    with open(base / "chat_eval" / "rl_rl_000004.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()] == ["Task", *names]
    meta = read_meta(base, "chatrl_checkpoints", "rl", 4)
    assert list(meta["chat_results"]) == names[:-1] and meta["chatcore"] == results["ChatCORE"]
    for name in names[:-1]:
        r = meta["chat_results"][name]
        assert (
            r["accuracy"] == results[name]
            and r["n"] == 2
            and r["centered"] == pytest.approx((r["accuracy"] - r["baseline"]) / (1 - r["baseline"]))
        )
    assert meta["chat_eval_settings"]["max_problems"] == 2
    with open(base / "report" / "chat-evaluation-rl.json") as f:
        report = json.load(f)
    assert report["section"] == "Chat evaluation rl" and all(report["data"][n] == results[n] for n in names)


def test_model_card_from_the_real_stages(base, evaluated):
    """The metas the scripts write make a full card: base -> mid -> sft -> rl with every recorded field, no filler."""
    from nanochat.model_card import load_lineage, render_model_card

    rl = read_meta(base, "chatrl_checkpoints", "rl", 4)
    records = load_lineage("rl", "rl", rl, base_dir=str(base))
    assert [r["stage"] for r in records] == ["base", "mid", "sft", "rl"]
    metas = [r["meta"] for r in records]
    for meta in metas:  # every stage records hardware, time, tokens, optimizer groups and its data
        run_info = meta["run_info"]
        assert run_info["device_count"] == 1 and run_info["device_type"] == "cpu" and run_info["dtype"] == "float32"
        assert run_info["wall_time_s"] > 0 and "GiB" in run_info["peak_memory"] and run_info["device_name"]
        assert meta["tokens_seen"] > 0 and meta["optimizer"][0]["name"] == "lm_head.weight"
        assert meta["data"]
    base_meta = metas[0]
    assert base_meta["tokens_seen"] == 2 * 512 and base_meta["data"]["val_file"] == "s_2.parquet"
    assert base_meta["data"]["train_files"] == ["s_0.parquet", "s_1.parquet"]
    assert [p["model_tag"] for p in (m["parent"] for m in metas[1:])] == ["tiny", "mid", "sft"]
    assert [t["task"] for t in metas[1]["data"]["train_mixture"]][:3] == ["SmolTalk", "MMLU", "GSM8K"]

    text = render_model_card(records)
    for word in ("not recorded", "unknown", "likely", "n/a"):
        assert word not in text.lower(), word
    assert "## Architecture" in text and "| layers (n_layer) | 2 |" in text
    assert "| blocks.*.{attn.c_q, attn.c_k, attn.c_v, attn.c_proj}.weight (64, 64) | muon | 8 |" in text
    assert "train_mixture:" in text and "| SmolTalk |" in text and "s_2.parquet" in text  # data
    assert (
        "| devices (processes) | 1 |" in text and "| wall time (s) |" in text and "| compute dtype | float32 |" in text
    )
    assert text.count("Tokens seen:") == 4
    assert "| ChatCORE |" in text and "| GSM8K |" in text and "pass_at_k by step:" in text  # metrics
    assert "chat_eval by step:" in text and "| val bpb |" in text
    assert "| None | None |" not in text  # chat loaders' states are shown by their own fields
    assert "| cursor | buffer_tokens | placed |" in text
