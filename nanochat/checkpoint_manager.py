"""
Checkpoints: save, find and load model / optimizer / metadata, and rebuild a model from a directory alone.

A checkpoint of step S in `<base>/<phase>_checkpoints/<tag>/` is three kinds of files:
- `model_{S:06d}.pt`          torch.save of the uncompiled model's state_dict (rank 0)
- `optim_{S:06d}_rank{r}.pt`  each rank's optimizer state (MuonAdamW shards its state across ranks)
- `meta_{S:06d}.json`         model config, full run config, derived hyperparameters, loop and dataloader state,
                              RNG states, metrics so far, git commit, format version (rank 0, written LAST)

Every file is written to `<name>.tmp` in the same directory, fsynced, then renamed over its final name, and the
meta file goes last, after a barrier across ranks: a checkpoint is complete exactly when its meta file exists,
so a process killed at any moment of a save leaves the previous checkpoint as the last loadable one.
"""

import base64
import json
import os
import random
import re
import subprocess

import numpy as np
import torch
import torch.distributed as dist

from nanochat.common import REPO_DIR, get_base_dir, print0
from nanochat.gpt import GPT, GPTConfig

FORMAT_VERSION = 1
PHASE_DIRS = {
    "base": "base_checkpoints",
    "mid": "mid_checkpoints",
    "sft": "chatsft_checkpoints",
    "rl": "chatrl_checkpoints",
}
META_RE = re.compile(r"^meta_(\d{6,})\.json$")


def model_path(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"model_{step:06d}.pt")


def meta_path(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"meta_{step:06d}.json")


def optim_path(ckpt_dir, step, rank):
    return os.path.join(ckpt_dir, f"optim_{step:06d}_rank{rank}.pt")


# -----------------------------------------------------------------------------
# Atomic writes


def fsync_dir(path):
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write_fn, binary=True):
    """write_fn(f) fills `path.tmp`; only a complete, fsynced file is renamed to `path`."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


# -----------------------------------------------------------------------------
# Provenance and RNG state (JSON-friendly)


def get_git_info():
    """{'commit': sha or None, 'dirty': bool or None}: which code wrote a checkpoint."""

    def git(*args):
        out = subprocess.run(["git", *args], check=False, cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def encode_tensor_bytes(t):
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def decode_tensor_bytes(s):
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state():
    """Python, numpy, torch CPU and CUDA generator states, as JSON-serializable values."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch_cpu": encode_tensor_bytes(torch.get_rng_state()),
        "torch_cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [encode_tensor_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state):
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(decode_tensor_bytes(state["torch_cpu"]))
    if state.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode_tensor_bytes(s) for s in state["torch_cuda"]])


# -----------------------------------------------------------------------------
# Save / load


def save_checkpoint(ckpt_dir, step, model_state, optim_state, meta, rank=0):
    """
    Collective under torch.distributed: every rank calls it (rank 0 writes model + meta, every rank its optimizer
    shard). `meta` gets `step`, `format_version` and `git` filled in.
    """
    os.makedirs(ckpt_dir, exist_ok=True)
    if rank == 0:
        # Re-saving a step: drop its old meta first, so that a crash mid-save can never pair new files with it.
        if os.path.exists(meta_path(ckpt_dir, step)):
            os.remove(meta_path(ckpt_dir, step))
        atomic_write(model_path(ckpt_dir, step), lambda f: torch.save(model_state, f))
    if optim_state is not None:
        atomic_write(optim_path(ckpt_dir, step, rank), lambda f: torch.save(optim_state, f))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank's shard is on disk before the meta file makes the checkpoint visible
    if rank == 0:
        meta = {**meta, "step": step, "format_version": FORMAT_VERSION}
        meta.setdefault("git", get_git_info())
        atomic_write(meta_path(ckpt_dir, step), lambda f: json.dump(meta, f, indent=2), binary=False)
        print0(f"saved checkpoint {ckpt_dir} step {step}")


def read_meta(ckpt_dir, step):
    with open(meta_path(ckpt_dir, step), encoding="utf-8") as f:
        return json.load(f)


def load_checkpoint(ckpt_dir, step, device, load_optimizer=False, rank=0):
    """(model_state, optim_state or None, meta) of a complete checkpoint, tensors mapped to `device`."""
    if not os.path.exists(meta_path(ckpt_dir, step)):
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {ckpt_dir} (its meta file is missing)")
    meta = read_meta(ckpt_dir, step)
    model_state = torch.load(model_path(ckpt_dir, step), map_location=device, weights_only=True)
    optim_state = None
    if load_optimizer:
        path = optim_path(ckpt_dir, step, rank)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: resume needs the same number of ranks that saved it")
        optim_state = torch.load(path, map_location=device, weights_only=True)
    return model_state, optim_state, meta


def is_complete(ckpt_dir, step):
    """A checkpoint counts only with a parseable meta file and its model file beside it."""
    if not os.path.exists(model_path(ckpt_dir, step)):
        return False
    try:
        read_meta(ckpt_dir, step)
    except (OSError, ValueError):
        return False
    return True


def find_last_step(ckpt_dir):
    """The largest step with a complete checkpoint; FileNotFoundError when there is none."""
    steps = []
    if os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            m = META_RE.match(name)
            if m and is_complete(ckpt_dir, int(m.group(1))):
                steps.append(int(m.group(1)))
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    return max(steps)


def find_largest_model(checkpoints_dir):
    """The model tag to load by default: the largest `d<depth>`, else the most recently modified directory."""
    if not os.path.isdir(checkpoints_dir):
        raise FileNotFoundError(f"no checkpoints directory {checkpoints_dir}")
    tags = [t for t in os.listdir(checkpoints_dir) if os.path.isdir(os.path.join(checkpoints_dir, t))]
    if not tags:
        raise FileNotFoundError(f"no model tags in {checkpoints_dir}")
    depth_tags = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(checkpoints_dir, t)))


# -----------------------------------------------------------------------------
# Dataloader state of the micro-batch slices (process `rank` owns slices rank * A + k, k < A accumulation steps)


def gather_slice_states(states):
    """
    Every process's list of slice states, concatenated in rank order, which is slice order (identity on one process).
    Collective under torch.distributed: every rank calls it and gets the whole list.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return list(states)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return [s for rank_states in gathered for s in rank_states]


def restore_slice_states(loaders, slice_states, rank):
    """Load into this process's loaders (its slices, in order) their states from the list gather_slice_states made."""
    for k, loader in enumerate(loaders):
        loader.load_state_dict(slice_states[rank * len(loaders) + k])


# -----------------------------------------------------------------------------
# Rebuilding a model


def build_model(model_config, device):
    """A GPT with initialised weights from a config dict: built on the meta device, then materialised."""
    config = GPTConfig(**model_config)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model


def load_state_into(model, model_state):
    """Load a saved state dict, stripping torch.compile's `_orig_mod.` prefix and matching the model's dtypes."""
    reference = model.state_dict()
    state = {}
    for key, tensor in model_state.items():
        key = key.removeprefix("_orig_mod.")
        if key in reference and tensor.dtype != reference[key].dtype:
            tensor = tensor.to(reference[key].dtype)  # e.g. bf16 embeddings saved on a GPU, loaded for fp32 on CPU
        state[key] = tensor
    model.load_state_dict(state, strict=True)


def load_model_from_dir(ckpt_dir, device, phase="eval", step=None):
    """(model, meta) from one checkpoint directory; the last complete step unless `step` is given."""
    assert phase in ("train", "eval"), f"phase must be train or eval, got {phase!r}"
    step = find_last_step(ckpt_dir) if step is None else step
    model_state, _, meta = load_checkpoint(ckpt_dir, step, device)
    model = build_model(meta["model_config"], device)
    load_state_into(model, model_state)
    model.train(phase == "train")
    return model, meta


def load_model(source, device, phase="eval", model_tag=None, step=None):
    """(model, tokenizer, meta) for source in base | mid | sft | rl, from `<base>/<phase dir>/<tag>/` alone."""
    from nanochat.tokenizer import get_tokenizer  # here, not at import: the tokenizer pulls in tiktoken/rustbpe

    assert source in PHASE_DIRS, f"source must be one of {sorted(PHASE_DIRS)}, got {source!r}"
    checkpoints_dir = os.path.join(get_base_dir(), PHASE_DIRS[source])
    model_tag = model_tag or find_largest_model(checkpoints_dir)
    ckpt_dir = os.path.join(checkpoints_dir, model_tag)
    model, meta = load_model_from_dir(ckpt_dir, device, phase=phase, step=step)
    tokenizer = get_tokenizer()
    vocab_size = meta["model_config"]["vocab_size"]
    assert tokenizer.get_vocab_size() == vocab_size, (
        f"tokenizer vocab {tokenizer.get_vocab_size()} != model vocab {vocab_size}: "
        f"this checkpoint was trained with another tokenizer"
    )
    print0(f"loaded {source} model {model_tag} step {meta['step']} from {ckpt_dir}")
    return model, tokenizer, meta
