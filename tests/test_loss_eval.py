"""Bits per byte: nats over targets that stand for bytes, specials and ignored targets excluded, summed over ranks."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import Tokenizer


class FakeModel(torch.nn.Module):
    """Per-token loss known in advance: `per_target[y]` nats for target y, 0 where y == -1."""

    def __init__(self, per_target):
        super().__init__()
        self.per_target = per_target

    def forward(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none" and x.shape == y.shape
        return torch.where(y >= 0, self.per_target[y.clamp(min=0)], 0.0)


TOKEN_BYTES = torch.tensor([0, 1, 2, 3, 4, 0], dtype=torch.int32)  # ids 0 and 5 are special tokens
PER_TARGET = torch.tensor([9.0, 1.0, 2.0, 0.5, 1.5, 7.0])


def batch(y):
    y = torch.tensor(y)
    return torch.zeros_like(y), y


def test_bpb_by_hand():
    """Sum of target losses over bytes, in bits; special targets (0 bytes) and ignored targets (-1) left out."""
    batches = [batch([[1, 2, 0, 3], [5, -1, 4, 4]]), batch([[3, 3, -1, 0], [2, 5, 1, 1]])]
    # step 1 counted targets: 1, 2, 3, 4, 4; step 2: 3, 3, 2, 1, 1
    nats = (1.0 + 2.0 + 0.5 + 1.5 + 1.5) + (0.5 + 0.5 + 2.0 + 1.0 + 1.0)
    num_bytes = (1 + 2 + 3 + 4 + 4) + (3 + 3 + 2 + 1 + 1)
    bpb = evaluate_bpb(FakeModel(PER_TARGET), iter(batches), steps=2, token_bytes=TOKEN_BYTES)
    assert bpb == pytest.approx(nats / (math.log(2) * num_bytes), rel=1e-6)
    # only the first step
    bpb1 = evaluate_bpb(FakeModel(PER_TARGET), iter(batches), steps=1, token_bytes=TOKEN_BYTES)
    assert bpb1 == pytest.approx(6.5 / (math.log(2) * 14), rel=1e-6)


def test_bpb_no_bytes_is_inf():
    """A batch of only specials and ignored targets has no bytes: bpb is infinite, not a division error."""
    assert evaluate_bpb(FakeModel(PER_TARGET), [batch([[0, 5, -1]])], steps=1, token_bytes=TOKEN_BYTES) == math.inf


def test_bpb_counts_utf8_bytes_of_real_text():
    """With a real tokenizer the byte total is the UTF-8 length of the text (BOS target excluded)."""
    text = "naïve café — 3.14 × 2 = 6.28; 東京 🚀 and\n\tthe end"
    tokenizer = Tokenizer.train_from_iterator(iter([text * 5, "some more plain text to learn from"]), 300)
    ids = tokenizer.encode([text, text], prepend="<|bos|>")[0] + tokenizer.encode(text, prepend="<|bos|>")
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])  # the second BOS is a target
    const = torch.full((tokenizer.get_vocab_size(),), 0.25)
    bpb = evaluate_bpb(FakeModel(const), [(x, y)], steps=1, token_bytes=tokenizer.token_bytes())
    n_counted = len(ids) - 2  # all targets except the BOS one
    assert bpb == pytest.approx(0.25 * n_counted / (math.log(2) * 2 * len(text.encode("utf-8"))), rel=1e-6)


def _rank_main(rank, world_size, tmp_dir, batches_per_rank):
    dist.init_process_group("gloo", init_method=f"file://{tmp_dir}/init", rank=rank, world_size=world_size)
    try:
        bpb = evaluate_bpb(FakeModel(PER_TARGET), batches_per_rank[rank], steps=1, token_bytes=TOKEN_BYTES)
        with open(f"{tmp_dir}/bpb{rank}", "w") as f:
            f.write(repr(bpb))
    finally:
        dist.destroy_process_group()


def test_bpb_sums_over_ranks(tmp_path):
    """Under torch.distributed (gloo, 2 processes) every rank gets the bpb of the union of all ranks' batches."""
    batches_per_rank = [[batch([[1, 2, 0, 3]])], [batch([[4, -1, 5, 4]])]]
    # fork: the children inherit the imported torch, which keeps this test fast
    mp.start_processes(_rank_main, args=(2, str(tmp_path), batches_per_rank), nprocs=2, start_method="fork")
    expected = evaluate_bpb(FakeModel(PER_TARGET), [batch([[1, 2, 0, 3, 4, -1, 5, 4]])], 1, TOKEN_BYTES)
    for rank in range(2):
        assert float((tmp_path / f"bpb{rank}").read_text()) == pytest.approx(expected, rel=1e-6)
