"""
Validation loss in bits per byte (bpb): the summed cross-entropy of the targets, converted from nats to bits,
divided by the number of UTF-8 bytes those targets stand for. Unlike the mean loss per token it does not
depend on the vocabulary size, so models with different tokenizers compare.

Targets that stand for no bytes are left out of both sums: special tokens (byte length 0 in the table)
and ignored positions (target -1).

The training scripts read val batches from each of their micro-batch slices in turn (round_robin), the same number
from every slice (count_eval_steps), so that val bpb sees the same tokens whatever the number of processes.
"""

import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """
    model(x, y, loss_reduction="none") -> (B, T) per-token loss in nats; batches yields (x, y);
    token_bytes: (vocab_size,) int tensor of UTF-8 byte lengths per token id (0 for special tokens).
    Sums over `steps` batches of this rank, then over all ranks when torch.distributed is initialized.
    """
    batch_iter = iter(batches)
    total_nats, total_bytes, token_bytes_on = None, None, None
    for _ in range(steps):
        x, y = next(batch_iter)
        loss = model(x, y, loss_reduction="none").float().view(-1)  # (B*T,) nats
        y = y.view(-1)
        if total_nats is None:
            total_nats = torch.zeros((), dtype=torch.float32, device=y.device)
            total_bytes = torch.zeros((), dtype=torch.int64, device=y.device)
            token_bytes_on = token_bytes.to(device=y.device, dtype=torch.int64)
        num_bytes = torch.where(y >= 0, token_bytes_on[y.clamp(min=0)], 0)  # (B*T,) 0 for ignored and specials
        total_nats += torch.where(num_bytes > 0, loss, 0.0).sum()
        total_bytes += num_bytes.sum()
    assert total_nats is not None, f"evaluate_bpb needs at least one step, got steps={steps}"
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    total_nats, total_bytes = total_nats.item(), total_bytes.item()
    if total_bytes == 0:
        return float("inf")
    return total_nats / (math.log(2) * total_bytes)


def round_robin(loaders):
    """Batches from each loader in turn, forever: a process's val batches drawn from all of its slices."""
    while True:
        for loader in loaders:
            yield next(loader)


def count_eval_steps(eval_tokens, device_batch_size, T, grad_accum_steps, num_slices):
    """Val batches per process for about `eval_tokens` tokens: whole batches of rows of T tokens, as many per slice."""
    eval_batches_per_slice = eval_tokens // (device_batch_size * T * num_slices)
    assert eval_batches_per_slice >= 1, (
        f"--eval-tokens {eval_tokens:,} is less than one batch per slice ({device_batch_size * T * num_slices:,})"
    )
    return eval_batches_per_slice * grad_accum_steps
