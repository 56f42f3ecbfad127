"""Model card: every recorded field shows up (architecture, optimizer and schedules, data and dataloader state, tokens,
hardware and time, every metric, lineage), nothing absent is invented, and the banned filler words never appear."""

import re

import torch

from nanochat.checkpoint_manager import PHASE_DIRS, save_checkpoint
from nanochat.dial import derive_hparams
from nanochat.gpt import GPT, GPTConfig
from nanochat.model_card import load_lineage, render_model_card, write_model_card

BANNED = ("not recorded", "unknown", "likely", "n/a")

MODEL_CONFIG = {
    "sequence_len": 160,
    "vocab_size": 512,
    "n_layer": 2,
    "n_head": 2,
    "n_kv_head": 1,
    "n_embd": 64,
    "window_pattern": "SL",
}


def loader_state(rank, world_size, rows, tokens_used, tokens_cropped):
    return {
        "version": 1, "split": "train", "rank": rank, "world_size": world_size, "num_files": 3, "epoch": 1,
        "file_idx": 1, "rg_idx": 4 + rank, "buffer": [[1, 2, 7]], "buffer_tokens": 300, "tokens_used": tokens_used,
        "tokens_cropped": tokens_cropped, "rows": rows,
    }  # fmt: skip


def base_meta(model_config=MODEL_CONFIG, step=20):
    """A meta shaped like scripts/base_train.py's, plus the fields a training script may add (run_info, data)."""
    h = derive_hparams(2, model_config["vocab_size"], model_config["sequence_len"], aspect_ratio=32, head_dim=32,
                       window_pattern=model_config["window_pattern"], num_iterations=step, total_batch_size=1280)  # fmt: skip
    user_config = {"run": "dummy", "device_type": "cpu", "dtype": "float32", "depth": 2, "max_seq_len": 160,
                   "matrix_lr": 0.02, "embedding_lr": 0.3, "warmup_steps": 4, "model_tag": "d2"}  # fmt: skip
    return {
        "model_config": dict(model_config),
        "user_config": user_config,
        "hparams": h.to_dict(),
        "world_size": 1,
        "device_batch_size": 4,
        "max_seq_len": 160,
        "total_batch_size": 1280,
        "grad_accum_steps": 2,
        "dataloader_state": [loader_state(0, 2, 40, 6440, 811), loader_state(1, 2, 40, 6440, 907)],
        "loop_state": {"smooth_train_loss": 5.4321, "total_training_time": 12.75},
        "val_bpb": 2.468,
        "metrics": {
            "train_loss": [6.2, 5.9, 5.1],
            "val_bpb": [[0, 3.917], [10, 2.911], [20, 2.468]],
            "core": [[20, 0.0517]],
        },
        "core_results": {
            "core": 0.0517,
            "results": {
                "hellaswag_zeroshot": {"accuracy": 0.31, "centered": 0.08, "n": 100, "baseline": 0.25},
                "arc_easy": {"accuracy": 0.29, "centered": 0.0233, "n": 100, "baseline": 0.25},
            },
        },
        "run_info": {"device_name": "Test CPU 9000", "mean_tok_per_sec": 1234.5, "mfu_percent": 1.25},
        "data": {"source": "embedded sample shards", "train_files": 2},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "step": step,
        "format_version": 1,
    }


def sft_meta(model_config=MODEL_CONFIG, step=7, parent_step=20):
    """A chat-stage meta: parent link, per-task chat evals, ChatCORE, an extra recorded number, optimizer groups."""
    return {
        "model_config": dict(model_config),
        "user_config": {"source": "base", "num_epochs": 1, "device_batch_size": 2, "target_examples_per_step": 4},
        "parent": {"source": "base", "model_tag": "d2", "step": parent_step},
        "tokens_seen": 9999,
        "val_loss": 1.875,
        "chat_results": {
            "ARC-Easy": {"accuracy": 0.3125, "centered": 0.0833, "n": 32},
            "MMLU": {"accuracy": 0.2656, "centered": 0.0208, "n": 64},
            "GSM8K": 0.0156,
        },
        "chatcore": 0.0412,
        "optimizer": [
            {
                "name": "lm_head.weight",
                "kind": "adamw",
                "initial_lr": 0.004,
                "betas": [0.8, 0.96],
                "eps": 1e-10,
                "weight_decay": 0.01,
                "num_tensors": 1,
            },
            {
                "name": "block matrices",
                "kind": "muon",
                "initial_lr": 0.02,
                "momentum": 0.95,
                "beta2": 0.9,
                "weight_decay": 0.0,
                "num_tensors": 8,
            },
        ],
        "run_info": {"device_name": "Test CPU 9000", "wall_time_s": 3.5},
        "loop_state": {"total_training_time": 3.25},
        "git": {"commit": "fedcba9876543210", "dirty": True},
        "step": step,
        "format_version": 1,
    }


def check_no_banned_words(text):
    low = text.lower()
    for word in BANNED:
        assert word not in low, f"the card contains {word!r}"


# -----------------------------------------------------------------------------


def test_card_has_every_recorded_field():
    """A base -> sft lineage shows architecture, optimizer, schedules, data, tokens, hardware, every metric."""
    text = render_model_card(
        [
            {"stage": "base", "model_tag": "d2", "meta": base_meta()},
            {"stage": "sft", "model_tag": "d2", "meta": sft_meta()},
        ]
    )
    check_no_banned_words(text)
    # front matter
    assert text.startswith("---\nlicense: mit\nlibrary_name: transformers\n")
    assert "- nanochat" in text and "- conversational" in text
    # architecture (parameter counts computed from the config)
    with torch.device("meta"):
        model = GPT(GPTConfig(**MODEL_CONFIG))
    counts = model.num_scaling_params()
    assert f"{counts['total']:,} total" in text
    assert "| query heads / key-value heads | 2 / 1 (head dim 32) |" in text
    assert "[128, 160]" in text  # per-layer windows
    assert "pattern 'SL'" in text and "layers [1]" in text and "times 1.2" in text
    # run settings and derived hyperparameters, every one
    for flag in base_meta()["user_config"]:
        assert f"| {flag} |" in text
    for name in base_meta()["hparams"]:
        if name != "model_config":
            assert f"| {name} |" in text, name
    # optimizer groups and schedules
    assert "| lm_head.weight | adamw | 1 | 0.004 | [0.8, 0.96] | 1.0000e-10 | 0.01 |" in text
    assert "momentum 0.95, beta2 0.9" in text
    assert "linear warmup over" in text and "Muon momentum" in text and "cosine from" in text
    # data, dataloader state, tokens seen
    assert "embedded sample shards" in text
    assert "| 1 | train | 1 | 1 | 5 | 3 | 40 | 6,440 | 907 |" in text
    assert "Tokens seen: 25,600 (20 steps x 1,280 tokens per step)" in text
    assert "Tokens seen: 9,999 (recorded by the training script)" in text
    # hardware and time
    assert "Test CPU 9000" in text and "1234.5" in text and "12.8 s (0.00 h)" in text
    assert "| processes (world size) | 1 |" in text
    # metrics: val bpb, its curve, CORE per task, chat evals per task, ChatCORE, extra recorded numbers
    assert "| val bpb (bits per byte, last evaluation) | 2.468 |" in text
    assert "| 10 | 2.911 |" in text
    assert "| hellaswag_zeroshot | 0.31 | 0.08 | 0.25 | 100 |" in text and "CORE = 0.0517" in text
    assert "| ARC-Easy | 0.3125 | 0.0833 | 32 |" in text and "| GSM8K | 0.0156 | - | - |" in text
    assert "| ChatCORE | 0.0412 |" in text and "| val_loss | 1.875 |" in text
    # lineage: both stages in order, with commits; the summary table has one column per stage
    assert text.index("### 1. base pretraining") < text.index("### 2. supervised fine-tuning (SFT)")
    assert "`0123456789abcdef` (clean)" in text and "`fedcba9876543210` (with uncommitted changes)" in text
    assert "| CORE | 0.0517 | - |" in text and "| ChatCORE | - | 0.0412 |" in text
    # intended use and limitations
    assert "## Intended use and limitations" in text and "python tool calls" in text


def test_card_leaves_out_what_is_absent():
    """A minimal meta gives a card without the sections it has no data for, and without filler."""
    meta = {"model_config": MODEL_CONFIG, "step": 3}
    text = render_model_card([meta])
    check_no_banned_words(text)
    for heading in ("#### Hardware and time", "#### Data", "#### Metrics", "## Evaluation summary", "Tokens seen",
                    "#### Optimizer", "## How to load", "## Export", "## Tokenizer"):  # fmt: skip
        assert heading not in text
    assert "## Architecture" in text and "## Intended use and limitations" in text
    assert re.search(r"step 3\b", text)


def test_card_from_checkpoint_dirs_follows_parent_links(tmp_path):
    """Checkpoint directories: lineage via `parent`, optimizer groups read and named from the optimizer file."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**MODEL_CONFIG))
    model.to_empty(device="cpu")
    model.init_weights()
    optim_state = model.setup_optimizer().state_dict()  # param groups only (no step taken): enough for the card
    base_dir = tmp_path / "base"
    meta = base_meta()
    del meta["step"], meta["format_version"]
    save_checkpoint(str(base_dir / PHASE_DIRS["base"] / "d2"), 20, model.state_dict(), optim_state, meta)
    sft = sft_meta()
    del sft["step"], sft["format_version"], sft["optimizer"]
    save_checkpoint(str(base_dir / PHASE_DIRS["sft"] / "d2"), 7, model.state_dict(), None, sft)

    records = load_lineage("sft", "d2", {"step": 7}, base_dir=str(base_dir))
    assert [(r["stage"], r["meta"]["step"]) for r in records] == [("base", 20), ("sft", 7)]
    text = write_model_card(records, str(tmp_path / "README.md"))
    assert (tmp_path / "README.md").read_text() == text
    check_no_banned_words(text)
    assert "Read from the rank-0 optimizer file" in text
    assert "| lm_head.weight | adamw | 1 |" in text and "| wte.weight | adamw | 1 |" in text
    assert "| x0_lambdas | adamw | 1 |" in text and "blocks.*.{attn.c_q, attn.c_proj}.weight (64, 64)" in text
    assert "`base_checkpoints/d2`, step 20" in text and "`chatsft_checkpoints/d2`, step 7" in text

    # a missing parent checkpoint ends the lineage at the oldest one on disk, and the card says why nothing precedes
    sft["parent"]["step"] = 999
    save_checkpoint(str(base_dir / PHASE_DIRS["sft"] / "d2"), 7, model.state_dict(), None, sft)
    records = load_lineage("sft", "d2", {"step": 7}, base_dir=str(base_dir))
    assert [r["stage"] for r in records] == ["sft"]
    text = render_model_card(records)
    assert "continues `base/d2` step 999, whose checkpoint was not on disk" in text
    check_no_banned_words(text)
