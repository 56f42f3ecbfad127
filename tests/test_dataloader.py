"""Pretraining dataloader: BOS-aligned best-fit packing, rank sharding, and exact resume."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import REPO_DIR
from nanochat.dataloader import PretrainLoader
from nanochat.dataset import parquets_iter_batched
from nanochat.tokenizer import Tokenizer

WORDS = ["the", "of", "and", "to", "in", "that", "he", "shall", "unto", "his", "lord", "said", "for", "with", "thou"]
ROW_GROUPS = [3, 4, 2]  # row groups per file; the last file is the validation split
DOCS_PER_ROW_GROUP = 8
B, T = 2, 32


def make_text(rng, name):
    # A unique name at the front keeps documents distinct; lengths range from empty-ish to several rows.
    n_words = rng.choice([0, 1, 3, 8, 15, 30, 60, 120])
    return name + " " + " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three parquet files with a single `text` column and several row groups each; plus a tiny tokenizer."""
    data_dir = tmp_path_factory.mktemp("shards")
    rng = random.Random(0)
    texts = {}  # (file_idx within its split, rg_idx, doc_idx) -> text, per split
    all_texts = []
    for f, n_rg in enumerate(ROW_GROUPS):
        rgs = [[make_text(rng, f"doc{f}x{rg}x{d}") for d in range(DOCS_PER_ROW_GROUP)] for rg in range(n_rg)]
        path = data_dir / f"shard_{f:05d}.parquet"
        with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
            for rg_texts in rgs:
                writer.write_table(pa.table({"text": rg_texts}))
        assert pq.ParquetFile(path).num_row_groups == n_rg
        split, f_in_split = ("val", 0) if f == len(ROW_GROUPS) - 1 else ("train", f)
        for rg, rg_texts in enumerate(rgs):
            for d, text in enumerate(rg_texts):
                texts[(split, f_in_split, rg, d)] = text
                all_texts.append(text)
    tokenizer = Tokenizer.train_from_iterator(iter(all_texts), 300)
    return str(data_dir), tokenizer, texts


@pytest.fixture(autouse=True)
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))


def make_loader(corpus, split="train", **kwargs):
    data_dir, tokenizer, _ = corpus
    kwargs = {"B": B, "T": T, "buffer_size": 12, "data_dir": data_dir, "rank": 0, "world_size": 1, **kwargs}
    return PretrainLoader(tokenizer, split=split, **kwargs)


def rows_of(x, y):
    """(B, T) inputs and targets -> (B, T+1) packed rows."""
    assert torch.equal(x[:, 1:], y[:, :-1]), "targets must be the inputs shifted by one"
    return torch.cat([x, y[:, -1:]], dim=1)


def take(loader, n):
    return [rows_of(*next(loader)) for _ in range(n)]


def doc_tokens(corpus, split):
    _, tokenizer, texts = corpus
    bos = tokenizer.get_bos_token_id()
    return {ref[1:]: tokenizer.encode(t, prepend=bos) for ref, t in texts.items() if ref[0] == split}


def segments(row, bos):
    """Split a row at its BOS tokens: each segment is one document (or the cropped start of one)."""
    starts = [i for i, t in enumerate(row) if t == bos]
    return [row[a:b] for a, b in zip(starts, starts[1:] + [len(row)])]


# -----------------------------------------------------------------------------
# A slow, obvious reference: the same stream and the same best-fit rule with a plain list and linear scans.


def reference_rows(corpus, split, n_rows, buffer_size, rank=0, world_size=1):
    docs = doc_tokens(corpus, split)
    n_rg = ROW_GROUPS[:-1] if split == "train" else ROW_GROUPS[-1:]
    stream = [(f, rg) for f in range(len(n_rg)) for rg in range(rank, n_rg[f], world_size)]
    buffer, next_rg, rows = [], 0, []  # buffer: token lists in insertion order
    for _ in range(n_rows):
        row, remaining = [], T + 1
        while remaining > 0:
            while len(buffer) < buffer_size:
                f, rg = stream[next_rg % len(stream)]
                buffer += [docs[(f, rg, d)] for d in range(DOCS_PER_ROW_GROUP)]
                next_rg += 1
            fitting = [i for i, doc in enumerate(buffer) if len(doc) <= remaining]
            if fitting:  # largest that fits; among equal lengths the latest inserted
                i = max(fitting, key=lambda i: (len(buffer[i]), i))
                doc = buffer.pop(i)
            else:  # none fits: crop the shortest; among equal lengths the earliest inserted
                i = min(range(len(buffer)), key=lambda i: (len(buffer[i]), i))
                doc = buffer.pop(i)[:remaining]
            row += doc
            remaining -= len(doc)
        rows.append(row)
    return rows


# -----------------------------------------------------------------------------


def test_rows_start_with_bos_and_are_whole_documents(corpus):
    """Every row starts with BOS and is made of real documents laid contiguously, only the last one cropped."""
    bos = corpus[1].get_bos_token_id()
    docs = list(doc_tokens(corpus, "train").values())
    whole = {tuple(d) for d in docs}
    loader = make_loader(corpus)
    for rows in take(loader, 30):
        assert rows.shape == (B, T + 1) and rows.dtype == torch.int64
        for row in rows.tolist():
            assert row[0] == bos
            segs = segments(row, bos)
            assert sum(len(s) for s in segs) == T + 1  # no padding: every position is a document token
            for s in segs[:-1]:
                assert tuple(s) in whole
            assert any(d[: len(segs[-1])] == segs[-1] for d in docs)  # the last may be a cropped start
    assert loader.tokens_used == 30 * B * (T + 1)
    assert loader.tokens_cropped > 0  # documents up to 120 words do not fit rows of 33 tokens


def test_matches_slow_reference(corpus):
    """The packed rows equal a linear-scan reference of the same stream and best-fit rule, across epochs."""
    for split, buffer_size in [("train", 12), ("train", 1), ("val", 5)]:
        loader = make_loader(corpus, split=split, buffer_size=buffer_size)
        got = [row for rows in take(loader, 60) for row in rows.tolist()]
        assert got == reference_rows(corpus, split, 60 * B, buffer_size), (split, buffer_size)
        assert loader.epoch > 1


def test_best_fit_rule_hand_built_buffer(corpus):
    """Largest document that fits goes first; when none fits the shortest is cropped to fill the row exactly."""
    loader = make_loader(corpus, T=9, buffer_size=1)  # rows of 10 tokens
    bos = loader.bos
    loader._lengths, loader._docs, loader._refs = [], [], []
    for n in [12, 9, 6, 5, 4, 3, 50]:  # the 50-token doc never fits and keeps the buffer from refilling
        loader._insert([bos] + [n] * (n - 1), (0, 0, n))
    row = np.zeros(10, dtype=np.int64)
    expected_rows = [
        [9] * 9 + [3],  # 9 fits, then 1 left: nothing fits, crop the shortest (3) to 1 token
        [6] * 6 + [4] * 4,  # 6 fits, then 4 fits exactly
        [5] * 5 + [12] * 5,  # 5 fits, then 5 left: nothing fits (12, 50), crop the shortest (12)
    ]
    for expected in expected_rows:
        loader._fill_row(row)
        starts = [0] + [i for i in range(1, 10) if expected[i] != expected[i - 1]]
        expected = [bos if i in starts else t for i, t in enumerate(expected)]
        assert row.tolist() == expected
    assert loader.tokens_cropped == 2 + 7
    assert loader._lengths == [50]


def test_rank_streams_disjoint_and_covering(corpus, monkeypatch):
    """Two ranks read disjoint row groups (r, r+W, ... in each file) that together cover the whole split."""
    read = {0: [], 1: []}
    for rank in (0, 1):
        loader = make_loader(corpus, rank=rank, world_size=2)
        orig_read = loader._read_texts

        def recording_read(f, rg, rank=rank, orig_read=orig_read):
            read[rank].append((f, rg))
            return orig_read(f, rg)

        monkeypatch.setattr(loader, "_read_texts", recording_read)
        docs = doc_tokens(corpus, "train")
        owner = {tuple(tokens): ref for ref, tokens in docs.items()}
        bos = loader.bos
        while loader.epoch == 1:
            for row in rows_of(*next(loader)).tolist():
                for s in segments(row, bos)[:-1]:
                    rg = owner[tuple(s)][1]
                    assert rg % 2 == rank, f"rank {rank} got a document of row group {rg}"
    # Files in order, and within each file row groups r, r+W, ... (the loop may have read into epoch 2).
    assert read[0][:4] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert read[1][:3] == [(0, 1), (1, 1), (1, 3)]
    assert set(read[0]).isdisjoint(read[1])
    everything = {(f, rg) for f, n in enumerate(ROW_GROUPS[:-1]) for rg in range(n)}
    assert set(read[0]) | set(read[1]) == everything
    # the same sharding as nanochat.dataset.parquets_iter_batched (which the tokenizer training uses)
    loader = make_loader(corpus)
    for rank, n in [(0, 4), (1, 3)]:
        expected = list(parquets_iter_batched("train", start=rank, step=2, data_dir=corpus[0]))
        assert [loader._read_texts(f, rg) for f, rg in read[rank][:n]] == expected


@pytest.mark.parametrize("split,rank,world_size", [("train", 0, 1), ("train", 1, 2), ("val", 0, 1)])
def test_resume_is_exact(corpus, split, rank, world_size):
    """A loader restored from the state after batch k yields exactly the uninterrupted batches after k,
    including k right after a file boundary and right after an epoch boundary."""
    n = 40
    loader = make_loader(corpus, split=split, rank=rank, world_size=world_size)
    batches, positions = [], [(loader.epoch, loader.file_idx)]
    for _ in range(n):
        batches.append(next(loader))
        positions.append((loader.epoch, loader.file_idx))
    file_changes = [k for k in range(1, n) if positions[k][1] != positions[k - 1][1]]
    epoch_changes = [k for k in range(1, n) if positions[k][0] != positions[k - 1][0]]
    assert epoch_changes, "the run should cross an epoch boundary"
    if split == "train":
        assert set(file_changes) - set(epoch_changes), "the run should cross a file boundary within an epoch"
    ks = sorted({1, 2, 7, n - 5} | set(file_changes[:3]) | set(epoch_changes[:2]))
    for k in ks:
        loader = make_loader(corpus, split=split, rank=rank, world_size=world_size)
        for _ in range(k):
            next(loader)
        state = json.loads(json.dumps(loader.state_dict()))
        restored = make_loader(corpus, split=split, rank=rank, world_size=world_size)
        restored.load_state_dict(state)
        assert restored.state_dict() == state
        for j in range(k, n):
            x, y = next(restored)
            assert torch.equal(x, batches[j][0]) and torch.equal(y, batches[j][1]), f"k={k}: batch {j} differs"
        assert restored.tokens_used == loader.tokens_used + (n - k) * B * (T + 1)


def test_state_dict_is_small_json(corpus):
    """state_dict() survives a JSON round trip, holds document references (not tokens), and checks its owner."""
    loader = make_loader(corpus)
    take(loader, 5)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state
    # the buffer is refilled to buffer_size=12 before every pick, so it holds at least 11 between batches
    assert len(state["buffer"]) >= 11 and all(len(ref) == 3 for ref in state["buffer"])
    assert state["version"] == 1 and state["epoch"] >= 1
    other = make_loader(corpus, rank=1, world_size=2)
    with pytest.raises(AssertionError, match="rank"):
        other.load_state_dict(state)


def test_crop_fraction_counts(corpus):
    """crop_fraction = cropped / (used + cropped), the share of tokenized tokens never trained on."""
    loader = make_loader(corpus)
    take(loader, 10)
    assert loader.crop_fraction == pytest.approx(loader.tokens_cropped / (loader.tokens_used + loader.tokens_cropped))
    assert 0 < loader.crop_fraction < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu(corpus):
    """On CUDA the batches (pinned buffer + non-blocking copy) equal the CPU ones, and earlier ones stay intact."""
    cpu = make_loader(corpus)
    gpu = make_loader(corpus, device="cuda")
    cpu_batches = [next(cpu) for _ in range(20)]
    gpu_batches = [next(gpu) for _ in range(20)]
    for (xc, yc), (xg, yg) in zip(cpu_batches, gpu_batches):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_packing_stats_script_runs(corpus, tmp_path):
    """The packing_stats command from its docstring runs and prints a crop fraction for each T."""
    data_dir = corpus[0]
    cmd = [sys.executable, "-m", "scripts.packing_stats", "--train-vocab", "300", "--data-dir", data_dir]
    cmd += ["--seq-lens", "64,16", "--rows", "16", "--batch-size", "4", "--buffer-size", "10"]
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path)}
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    stats = {int(cols[0]): cols for cols in lines if cols and cols[0].isdigit()}
    assert set(stats) == {64, 16} and all(cols[4].endswith("%") for cols in stats.values())
