"""
Pretraining dataloader: streams documents from the parquet shards, tokenizes them, and packs them into
rows of T+1 tokens ("BOS-aligned best-fit", as in nanochat), with an exact, small resume state.

- Sharding: the split's files are read in order (train = all files but the last, val = the last file);
  within every file, rank r of W reads row groups r, r+W, r+2W, ... Ranks never share a document.
  When the split is exhausted the stream starts over at file 0 and `epoch` goes up by one (both splits
  are infinite; the validation loss takes a fixed number of steps).
- Tokenization: one row group at a time with the tokenizer's threaded batch encoder, BOS prepended to
  every document, no EOS.
- Packing: a buffer of at least `buffer_size` tokenized documents is kept. Each row has room for T+1
  tokens; we repeatedly place the LARGEST buffered document that fits whole in the remaining space, and
  when none fits we take the SHORTEST one and crop it to fill the row exactly (the rest of it is
  discarded). So every row starts with BOS and nothing is padded; the price is the cropped tokens,
  counted in `tokens_cropped` (vs `tokens_used`, the tokens that went into rows). A document longer than a
  row only leaves the buffer once it is the shortest there, so the buffer drifts towards long documents and
  the crop fraction climbs from its start-up value to a steady state (`python -m scripts.packing_stats`).
- Batches: inputs = row[:-1], targets = row[1:], int64 (B, T). On CUDA both are written into one pinned
  CPU buffer and moved with a single non-blocking copy.

Resume state (`state_dict()`, JSON-serializable, format version 1):
    {"version": 1, "split", "rank", "world_size", "num_files",   # checked on load
     "epoch": int,                 # starts at 1
     "file_idx": int, "rg_idx": int,   # the next row group this rank reads (index into the split's files)
     "buffer": [[file_idx, rg_idx, doc_idx], ...],   # the buffered docs, in buffer order (sorted by length)
     "buffer_tokens": int,         # total tokens in the buffer, to catch a different tokenizer on load
     "tokens_used": int, "tokens_cropped": int, "rows": int}
A document is either whole in the buffer or consumed, so references are enough: on load the referenced
row groups are read again and the documents re-tokenized. The loader restored from the state taken after
batch k yields exactly the batches that the uninterrupted loader yields after batch k.
"""

import bisect
import os

import numpy as np
import pyarrow.parquet as pq
import torch

from nanochat.common import get_dist_info
from nanochat.dataset import list_parquet_files

STATE_VERSION = 1


def split_files(split, data_dir=None):
    """The parquet files of a split, in order: train = all files but the last, val = the last one."""
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    paths = list_parquet_files(data_dir)
    assert len(paths) >= 2, f"need at least 2 parquet files (train + val), found {len(paths)} in {data_dir}"
    return paths[:-1] if split == "train" else paths[-1:]


class PretrainLoader:
    def __init__(
        self,
        tokenizer,
        B,
        T,
        split,
        device="cpu",
        rank=None,
        world_size=None,
        data_dir=None,
        buffer_size=1000,
        tokenizer_threads=4,
    ):
        assert B >= 1 and T >= 1, f"B and T must be positive, got B={B} T={T}"
        assert buffer_size >= 1, f"buffer_size must be positive, got {buffer_size}"
        _, dist_rank, _, dist_world_size = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world_size if world_size is None else world_size
        assert 0 <= self.rank < self.world_size, f"rank {self.rank} out of range for world_size {self.world_size}"
        self.tokenizer = tokenizer
        self.B, self.T, self.split = B, T, split
        self.device = torch.device(device)
        self.buffer_size = buffer_size
        self.tokenizer_threads = tokenizer_threads
        self.bos = tokenizer.get_bos_token_id()
        self.files = split_files(split, data_dir)
        self._num_row_groups = {}  # file_idx -> row groups in that file (read from the footer once)
        # Stream position: the next row group this rank reads.
        self.epoch, self.file_idx, self.rg_idx = 1, 0, self.rank
        self._skip_empty_files()
        # The buffer: three lists kept sorted by document length (ties in insertion order).
        self._lengths, self._docs, self._refs = [], [], []
        self.tokens_used = 0  # tokens placed into rows
        self.tokens_cropped = 0  # tokens cut off the ends of cropped documents
        self.rows = 0
        # Host staging: numpy view of a (2, B, T) int64 tensor = inputs and targets side by side;
        # pinned on CUDA so that one non-blocking copy moves the whole batch.
        self._row = np.empty(T + 1, dtype=np.int64)
        if self.device.type == "cuda":
            self._pinned = torch.empty((2, B, T), dtype=torch.int64, pin_memory=True)
            self._copy_done = None  # CUDA event of the last copy out of the pinned buffer

    # -------------------------------------------------------------------------
    # Reading row groups

    def _row_groups_in(self, file_idx):
        if file_idx not in self._num_row_groups:
            self._num_row_groups[file_idx] = pq.ParquetFile(self.files[file_idx]).num_row_groups
        return self._num_row_groups[file_idx]

    def _skip_empty_files(self):
        # Move the position forward to a row group that exists for this rank (some files may have fewer
        # row groups than there are ranks).
        files_skipped = 0
        while self.rg_idx >= self._row_groups_in(self.file_idx):
            files_skipped += 1
            assert files_skipped <= len(self.files), (
                f"rank {self.rank} of {self.world_size} gets no row group of the {self.split} split "
                f"({len(self.files)} files): use fewer ranks or more data"
            )
            self.file_idx, self.rg_idx = self.file_idx + 1, self.rank
            if self.file_idx == len(self.files):
                self.file_idx, self.epoch = 0, self.epoch + 1

    def _read_texts(self, file_idx, rg_idx):
        table = pq.ParquetFile(self.files[file_idx]).read_row_group(rg_idx, columns=["text"])
        return table.column("text").to_pylist()

    def _encode(self, texts):
        # int32 arrays: a quarter of the memory of lists of Python ints, and fast to copy into rows
        ids = self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.tokenizer_threads)
        return [np.array(tokens, dtype=np.int32) for tokens in ids]

    def _insert(self, tokens, ref):
        i = bisect.bisect_right(self._lengths, len(tokens))
        self._lengths.insert(i, len(tokens))
        self._docs.insert(i, tokens)
        self._refs.insert(i, ref)

    def _pop(self, i):
        self._lengths.pop(i)
        self._refs.pop(i)
        return self._docs.pop(i)

    def _refill(self):
        while len(self._docs) < self.buffer_size:
            f, rg = self.file_idx, self.rg_idx
            for d, tokens in enumerate(self._encode(self._read_texts(f, rg))):
                self._insert(tokens, (f, rg, d))
            self.rg_idx += self.world_size
            self._skip_empty_files()

    # -------------------------------------------------------------------------
    # Packing

    def _fill_row(self, row):
        """Fill `row` (T+1 tokens) best-fit from the buffer."""
        pos, capacity = 0, len(row)
        while pos < capacity:
            self._refill()
            remaining = capacity - pos
            i = bisect.bisect_right(self._lengths, remaining) - 1  # largest doc that fits whole
            if i >= 0:
                doc = self._pop(i)
            else:
                doc = self._pop(0)  # none fits: crop the shortest
                self.tokens_cropped += len(doc) - remaining
                doc = doc[:remaining]
            row[pos : pos + len(doc)] = doc
            pos += len(doc)
        self.tokens_used += capacity
        self.rows += 1

    def __iter__(self):
        return self

    def __next__(self):
        B, T = self.B, self.T
        if self.device.type == "cuda":
            if self._copy_done is not None:
                self._copy_done.synchronize()  # the previous copy must have left the pinned buffer
            host = self._pinned
        else:
            host = torch.empty((2, B, T), dtype=torch.int64)
        staging = host.numpy()
        row = self._row
        for b in range(B):
            self._fill_row(row)
            staging[0, b] = row[:-1]
            staging[1, b] = row[1:]
        if self.device.type == "cuda":
            batch = torch.empty((2, B, T), dtype=torch.int64, device=self.device)
            batch.copy_(host, non_blocking=True)
            self._copy_done = torch.cuda.Event()
            self._copy_done.record()
        else:
            batch = host.to(self.device)
        return batch[0], batch[1]

    # -------------------------------------------------------------------------
    # Resume

    def state_dict(self):
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_files": len(self.files),
            "epoch": self.epoch,
            "file_idx": self.file_idx,
            "rg_idx": self.rg_idx,
            "buffer": [list(ref) for ref in self._refs],
            "buffer_tokens": sum(self._lengths),
            "tokens_used": self.tokens_used,
            "tokens_cropped": self.tokens_cropped,
            "rows": self.rows,
        }

    def load_state_dict(self, state):
        assert state["version"] == STATE_VERSION, f"dataloader state version {state['version']} != {STATE_VERSION}"
        mine = (self.split, self.rank, self.world_size, len(self.files))
        theirs = (state["split"], state["rank"], state["world_size"], state["num_files"])
        assert mine == theirs, f"dataloader state is for (split, rank, world_size, num_files)={theirs}, this is {mine}"
        # Re-read and re-tokenize the buffered documents, one row group at a time.
        refs = [tuple(ref) for ref in state["buffer"]]
        wanted = {}  # (file_idx, rg_idx) -> doc indices
        for f, rg, d in refs:
            wanted.setdefault((f, rg), []).append(d)
        tokens_of = {}
        for (f, rg), doc_ids in wanted.items():
            texts = self._read_texts(f, rg)
            for d, tokens in zip(doc_ids, self._encode([texts[d] for d in doc_ids])):
                tokens_of[(f, rg, d)] = tokens
        self._docs = [tokens_of[ref] for ref in refs]
        self._lengths = [len(doc) for doc in self._docs]
        self._refs = refs
        assert all(a <= b for a, b in zip(self._lengths, self._lengths[1:])), "restored buffer is not sorted by length"
        assert sum(self._lengths) == state["buffer_tokens"], (
            f"restored buffer has {sum(self._lengths)} tokens, state says {state['buffer_tokens']}: "
            "different tokenizer or data?"
        )
        self.epoch, self.file_idx, self.rg_idx = state["epoch"], state["file_idx"], state["rg_idx"]
        self.tokens_used, self.tokens_cropped, self.rows = state["tokens_used"], state["tokens_cropped"], state["rows"]

    # -------------------------------------------------------------------------
    # Progress

    @property
    def crop_fraction(self):
        """Fraction of the tokens taken out of the buffer that were cropped away (not trained on)."""
        taken = self.tokens_used + self.tokens_cropped
        return self.tokens_cropped / taken if taken else 0.0

    @property
    def num_buffered(self):
        return len(self._docs)

    @property
    def current_file(self):
        return os.path.basename(self.files[self.file_idx])
