"""Checkpoints: round trip, RNG state, a save killed mid-write, partial files, load_model from a directory alone."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from nanochat.checkpoint_manager import (
    find_largest_model,
    find_last_step,
    get_rng_state,
    load_checkpoint,
    load_model,
    load_model_from_dir,
    save_checkpoint,
    set_rng_state,
)
from nanochat.common import REPO_DIR
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

TINY = {
    "sequence_len": 32,
    "vocab_size": 300,
    "n_layer": 2,
    "n_head": 2,
    "n_kv_head": 2,
    "n_embd": 64,
    "window_pattern": "L",
}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(GPTConfig(**TINY))
    model.to_empty(device="cpu")
    model.init_weights()
    with torch.no_grad():  # the output projections start at zero: perturb everything so logits depend on all weights
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_round_trip(tmp_path):
    """Model, optimizer and meta come back identical; meta gains step, format version and git info."""
    model = tiny_model()
    optim_state = {
        "state": {0: {"step": 3, "exp_avg": torch.randn(5, 4)}},
        "param_groups": [{"lr": 0.1, "params": [0]}],
    }
    meta = {"model_config": TINY, "loop_state": {"smooth_train_loss": 1.25}, "rng_state": get_rng_state()}
    save_checkpoint(str(tmp_path), 7, model.state_dict(), optim_state, meta)
    assert sorted(os.listdir(tmp_path)) == ["meta_000007.json", "model_000007.pt", "optim_000007_rank0.pt"]
    model_state, optim_back, meta_back = load_checkpoint(str(tmp_path), 7, "cpu", load_optimizer=True)
    for k, v in model.state_dict().items():
        assert torch.equal(model_state[k], v), k
    assert torch.equal(optim_back["state"][0]["exp_avg"], optim_state["state"][0]["exp_avg"])
    assert meta_back["step"] == 7 and meta_back["format_version"] == 1 and "commit" in meta_back["git"]
    assert meta_back["loop_state"] == {"smooth_train_loss": 1.25}
    assert find_last_step(str(tmp_path)) == 7
    rebuilt, _ = load_model_from_dir(str(tmp_path), "cpu")
    x = torch.randint(0, 300, (2, 16))
    assert torch.equal(rebuilt(x), model.eval()(x))


def test_compiled_prefix_and_bf16_are_handled(tmp_path):
    """State dicts of a compiled model (`_orig_mod.` keys) and bf16 tensors load into an fp32 CPU model."""
    model = tiny_model()
    state = {"_orig_mod." + k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_checkpoint(str(tmp_path), 1, state, None, {"model_config": TINY})
    rebuilt, _ = load_model_from_dir(str(tmp_path), "cpu")
    assert rebuilt.lm_head.weight.dtype == torch.float32
    assert torch.equal(rebuilt.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())


def test_rng_state_round_trip_through_json():
    """python, numpy and torch generators continue identically after a JSON round trip of their state."""
    state = json.loads(json.dumps(get_rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from nanochat.checkpoint_manager import save_checkpoint

    class SlowPickle:
        # pickling this blocks: the process is inside torch.save of the optimizer file when it gets killed
        def __reduce__(self):
            time.sleep(60)
            return (int, (0,))

    ckpt_dir = sys.argv[1]
    weights = {"w": torch.arange(4.0)}
    save_checkpoint(ckpt_dir, 1, weights, {"m": torch.ones(2)}, {"model_config": {}})
    save_checkpoint(ckpt_dir, 2, {"w": weights["w"] + 1}, {"m": SlowPickle()}, {"model_config": {}})
    """
)


def test_save_killed_mid_write_keeps_last_good_checkpoint(tmp_path):
    """SIGKILL during a save: the half-written step is never found, the previous one still loads."""
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(ckpt_dir)], cwd=REPO_DIR)
    tmp_file = ckpt_dir / "optim_000002_rank0.pt.tmp"
    deadline = time.time() + 60
    while not tmp_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert tmp_file.exists(), "the child never reached the second save"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt_dir / "model_000002.pt").exists()  # written, but the checkpoint is incomplete without its meta
    assert not (ckpt_dir / "meta_000002.json").exists()
    assert find_last_step(str(ckpt_dir)) == 1
    model_state, _, meta = load_checkpoint(str(ckpt_dir), 1, "cpu", load_optimizer=True)
    assert torch.equal(model_state["w"], torch.arange(4.0)) and meta["step"] == 1
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(ckpt_dir), 2, "cpu")


def test_partial_and_corrupt_files_are_not_checkpoints(tmp_path):
    """tmp files, a meta without its model and a truncated meta are all ignored by find_last_step."""
    save_checkpoint(str(tmp_path), 3, {"w": torch.zeros(1)}, None, {"model_config": {}})
    (tmp_path / "model_000004.pt").write_bytes(b"garbage")
    (tmp_path / "meta_000004.json.tmp").write_text("{}")
    (tmp_path / "meta_000005.json").write_text("{}")  # no model file beside it
    (tmp_path / "model_000006.pt").write_bytes(b"garbage")
    (tmp_path / "meta_000006.json").write_text('{"step": 6, "model_')  # truncated
    assert find_last_step(str(tmp_path)) == 3
    with pytest.raises(FileNotFoundError):
        find_last_step(str(tmp_path / "missing"))


def test_load_model_from_base_dir(tmp_path, monkeypatch):
    """load_model picks the largest d<N> tag and last step, and refuses a tokenizer of another vocab size."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    text = "the quick brown fox jumps over the lazy dog; a stitch in time saves nine. " * 200
    tokenizer = Tokenizer.train_from_iterator(iter([text]), 300)
    tokenizer.save(str(tmp_path / "tokenizer"))
    config = {**TINY, "vocab_size": tokenizer.get_vocab_size()}
    model = tiny_model()
    state = model.state_dict()
    for tag, step in (("d1", 5), ("d2", 3), ("d2", 9)):
        save_checkpoint(str(tmp_path / "base_checkpoints" / tag), step, state, None, {"model_config": config})
    assert find_largest_model(str(tmp_path / "base_checkpoints")) == "d2"
    loaded, tok, meta = load_model("base", "cpu")
    assert meta["step"] == 9 and not loaded.training and tok.get_vocab_size() == config["vocab_size"]
    bad_dir = str(tmp_path / "base_checkpoints" / "d3")
    bad_config = {**config, "vocab_size": config["vocab_size"] + 1}  # same padded shapes, another vocab
    save_checkpoint(bad_dir, 1, state, None, {"model_config": bad_config})
    with pytest.raises(AssertionError, match="tokenizer vocab"):
        load_model("base", "cpu", model_tag="d3")
