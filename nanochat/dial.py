"""
The depth dial: every hyperparameter of a pretraining run derived from one integer, the depth.

`derive_hparams(depth, vocab_size)` runs the numbered steps below (sources in brackets) and returns an
`HParams` dataclass; `format_hparams_table(h)` prints it; `lr_multiplier`, `muon_momentum` and
`muon_weight_decay` are the schedules, pure functions of the step. scripts/base_train.py calls these;
tests/test_dial.py pins them against a table written down by hand for d4, d12, d20 and d26.

Units: batch sizes and horizons are in tokens unless a name says rows; FLOPs are training FLOPs
(forward + backward) counted by GPT.estimate_flops().
"""

import math
from dataclasses import asdict, dataclass

import torch

from nanochat.gpt import GPT, GPTConfig

B_REF = 2**19  # tokens per optimizer step at the reference depth, where all base LRs and the WD were tuned
DEPTH_REF = 12  # the reference depth
D_MODEL_REF = 768  # width at which the AdamW (embedding / unembedding) LRs were tuned
BATCH_EXPONENT = 0.383  # B_opt ∝ D^0.383 ("Power Lines", arXiv 2505.13738)


@dataclass
class HParams:
    # shape
    depth: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    sequence_len: int
    vocab_size: int
    window_pattern: str
    model_config: dict  # GPTConfig as a dict, ready for GPT(GPTConfig(**model_config)) and for JSON
    # parameter and FLOP accounting
    num_params: int  # everything, embeddings included
    num_scaling_params: int  # N = transformer matrices + lm_head (Kaplan-style count)
    num_scaling_params_ref: int  # N at the reference depth with the same width rule, vocab and T
    flops_per_token: float
    # batch
    target_param_data_ratio: float
    target_tokens: int  # D = ratio x N: the token budget the batch and weight decay are planned for
    target_tokens_ref: int  # D_ref = ratio x N_ref
    total_batch_size: int  # tokens per optimizer step, all ranks and micro-steps together
    # learning rates (base values; GPT.setup_optimizer multiplies by the two scales)
    batch_lr_scale: float  # sqrt(B / B_REF), all groups
    dmodel_lr_scale: float  # (n_embd / 768)^-0.5, AdamW embedding-type groups only
    matrix_lr: float
    embedding_lr: float
    unembedding_lr: float
    scalar_lr: float
    weight_decay: float  # Muon weight decay at step 0 (cosine to 0 over the run)
    weight_decay_ref: float
    # horizon
    num_iterations: int
    horizon_source: str  # "num_iterations" | "target_flops" | "param_data_ratio"
    train_tokens: int  # num_iterations x total_batch_size
    train_flops: float  # flops_per_token x train_tokens
    # schedules
    warmup_steps: int
    warmdown_ratio: float
    final_lr_frac: float
    momentum_warmup_steps: int

    def to_dict(self):
        return asdict(self)


def round_up(x, multiple):
    return -(-x // multiple) * multiple


def build_meta_model(depth, vocab_size, sequence_len, aspect_ratio, head_dim, window_pattern):
    """A GPT on the meta device: shapes and counts without memory or init cost."""
    n_embd = round_up(depth * aspect_ratio, head_dim)
    n_head = n_embd // head_dim
    config = GPTConfig(
        sequence_len=sequence_len,
        vocab_size=vocab_size,
        n_layer=depth,
        n_head=n_head,
        n_kv_head=n_head,
        n_embd=n_embd,
        window_pattern=window_pattern,
    )
    with torch.device("meta"):
        model = GPT(config)
    return model, config


def scaling_params(model):
    counts = model.num_scaling_params()
    return counts["transformer_matrices"] + counts["lm_head"]


def derive_hparams(
    depth,
    vocab_size,
    sequence_len=2048,
    *,
    aspect_ratio=64,
    head_dim=128,
    window_pattern="SSSL",
    target_param_data_ratio=12,
    target_flops=-1,
    num_iterations=-1,
    total_batch_size=-1,
    matrix_lr=0.02,
    embedding_lr=0.3,
    unembedding_lr=0.008,
    scalar_lr=0.5,
    weight_decay_ref=0.28,
    warmup_steps=40,
    warmdown_ratio=0.65,
    final_lr_frac=0.05,
    momentum_warmup_steps=400,
):
    assert depth >= 1, f"depth must be >= 1, got {depth}"
    assert target_param_data_ratio > 0, f"target_param_data_ratio must be > 0, got {target_param_data_ratio}"

    # 1. Shape [nanochat.md 2.1]: 64 channels per layer, rounded up to whole heads, so that head_dim is the same
    #    at every depth; plain multi-head attention (n_kv_head = n_head).
    model, config = build_meta_model(depth, vocab_size, sequence_len, aspect_ratio, head_dim, window_pattern)

    # 2. Parameter count [2.2]: N = transformer matrices + lm_head. Embedding tables are left out: this count gave
    #    the cleanest scaling laws (nanochat LOG 2026-01-27). The reference d12 is built the same way, so the
    #    reference point follows any change of architecture, vocab or sequence length.
    num_params = model.num_scaling_params()["total"]
    N = scaling_params(model)
    flops_per_token = model.estimate_flops()
    ref_model, _ = build_meta_model(DEPTH_REF, vocab_size, sequence_len, aspect_ratio, head_dim, window_pattern)
    N_ref = scaling_params(ref_model)

    # 3. Token budget [2.3]: D = ratio x N (12 by default; Chinchilla would be 20). The batch (step 4) and the
    #    weight decay (step 6) are planned for this budget even when steps 7 set a different horizon.
    target_tokens = int(target_param_data_ratio * N)
    target_tokens_ref = int(target_param_data_ratio * N_ref)

    # 4. Batch [2.4]: B = B_REF x (D / D_ref)^0.383, rounded to a power of two. The ratio cancels in D / D_ref,
    #    so the auto batch depends on N / N_ref alone.
    if total_batch_size == -1:
        predicted = B_REF * (target_tokens / target_tokens_ref) ** BATCH_EXPONENT
        total_batch_size = 2 ** round(math.log2(predicted))
    assert total_batch_size > 0, f"total_batch_size must be > 0 (or -1 for auto), got {total_batch_size}"

    # 5. Learning rates [2.5]: sqrt(B / B_REF) for every group (the square-root rule of Adam, assumed for Muon too),
    #    and (d / 768)^-0.5 for the AdamW embedding / unembedding groups, applied by GPT.setup_optimizer.
    batch_lr_scale = math.sqrt(total_batch_size / B_REF)
    dmodel_lr_scale = (config.n_embd / D_MODEL_REF) ** -0.5

    # 6. Muon weight decay [2.6]: the T_epoch rule (arXiv 2405.13698) keeps B / (lr x wd x D) constant; with
    #    lr ∝ sqrt(B) that gives wd = wd_ref x sqrt(B / B_REF) x D_ref / D. Note how fast it grows at small depths.
    weight_decay = weight_decay_ref * math.sqrt(total_batch_size / B_REF) * (target_tokens_ref / target_tokens)

    # 7. Horizon [2.3], first match wins: explicit steps > a FLOP budget > the tokens : params ratio.
    if num_iterations > 0:
        horizon_source = "num_iterations"
    elif target_flops > 0:
        num_iterations = round(target_flops / (flops_per_token * total_batch_size))
        horizon_source = "target_flops"
    else:
        num_iterations = target_tokens // total_batch_size
        horizon_source = "param_data_ratio"
    assert num_iterations >= 1, f"the horizon came out as {num_iterations} steps ({horizon_source}): raise it"
    train_tokens = num_iterations * total_batch_size

    # 8. Schedules [2.7]: see lr_multiplier, muon_momentum and muon_weight_decay below.
    return HParams(
        depth=depth,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_kv_head=config.n_kv_head,
        head_dim=config.n_embd // config.n_head,
        sequence_len=sequence_len,
        vocab_size=vocab_size,
        window_pattern=window_pattern,
        model_config=asdict(config),
        num_params=num_params,
        num_scaling_params=N,
        num_scaling_params_ref=N_ref,
        flops_per_token=flops_per_token,
        target_param_data_ratio=target_param_data_ratio,
        target_tokens=target_tokens,
        target_tokens_ref=target_tokens_ref,
        total_batch_size=total_batch_size,
        batch_lr_scale=batch_lr_scale,
        dmodel_lr_scale=dmodel_lr_scale,
        matrix_lr=matrix_lr,
        embedding_lr=embedding_lr,
        unembedding_lr=unembedding_lr,
        scalar_lr=scalar_lr,
        weight_decay=weight_decay,
        weight_decay_ref=weight_decay_ref,
        num_iterations=num_iterations,
        horizon_source=horizon_source,
        train_tokens=train_tokens,
        train_flops=flops_per_token * train_tokens,
        warmup_steps=warmup_steps,
        warmdown_ratio=warmdown_ratio,
        final_lr_frac=final_lr_frac,
        momentum_warmup_steps=momentum_warmup_steps,
    )


# -----------------------------------------------------------------------------
# Schedules: pure functions of the step, so that a resumed run continues them exactly


def warmdown_progress(step, num_iterations, warmdown_ratio):
    """1.0 at the start of the warmdown, 0.0 at the last step; None before the warmdown."""
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if warmdown_steps == 0 or step <= num_iterations - warmdown_steps:
        return None
    return (num_iterations - step) / warmdown_steps


def lr_multiplier(step, num_iterations, warmup_steps, warmdown_ratio, final_lr_frac):
    """Linear warmup to 1, flat, then linear warmdown to final_lr_frac over the last warmdown_ratio of steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    p = warmdown_progress(step, num_iterations, warmdown_ratio)
    if p is None:
        return 1.0
    return p + (1 - p) * final_lr_frac


def muon_momentum(step, num_iterations, warmdown_ratio, momentum_warmup_steps=400):
    """0.85 -> 0.97 linearly over the first momentum_warmup_steps, then 0.97 -> 0.90 across the warmdown."""
    frac = min(step / momentum_warmup_steps, 1.0) if momentum_warmup_steps > 0 else 1.0
    momentum = 0.85 + frac * (0.97 - 0.85)
    p = warmdown_progress(step, num_iterations, warmdown_ratio)
    if p is not None:
        # blend towards 0.90 from wherever the warmup had got to: continuous even in runs shorter than the warmup
        momentum = 0.90 + p * (momentum - 0.90)
    return momentum


def muon_weight_decay(step, num_iterations, weight_decay):
    """Cosine from weight_decay at step 0 to 0 at the last step [nanochat.md 2.6]."""
    return weight_decay * 0.5 * (1 + math.cos(math.pi * step / num_iterations))


# -----------------------------------------------------------------------------
# Printing


def format_hparams_table(h):
    """The derived hyperparameters as an aligned two-column table, with how each was obtained."""
    m = 1e6
    rows = [
        ("depth", f"{h.depth}", "--depth"),
        ("n_embd", f"{h.n_embd}", f"ceil({h.depth} x aspect / {h.head_dim}) x {h.head_dim}"),
        ("n_head / n_kv_head", f"{h.n_head} / {h.n_kv_head}", f"n_embd / head_dim {h.head_dim}"),
        ("sequence_len / vocab", f"{h.sequence_len} / {h.vocab_size:,}", f"window pattern {h.window_pattern}"),
        ("params (all)", f"{h.num_params / m:.2f}M", "embeddings included"),
        ("N scaling", f"{h.num_scaling_params / m:.2f}M", "transformer matrices + lm_head"),
        ("N scaling at d12", f"{h.num_scaling_params_ref / m:.2f}M", "reference point"),
        ("FLOPs / token", f"{h.flops_per_token:.3e}", "6 x matmul params + attention"),
        ("target tokens D", f"{h.target_tokens:,}", f"{h.target_param_data_ratio} x N"),
        ("total batch (tokens)", f"{h.total_batch_size:,}", "2^round(log2(2^19 (D/D_d12)^0.383)) unless set"),
        ("batch LR scale", f"{h.batch_lr_scale:.4f}", "sqrt(B / 2^19)"),
        ("width LR scale", f"{h.dmodel_lr_scale:.4f}", "(n_embd / 768)^-0.5, AdamW embeddings/head"),
        ("matrix LR (Muon)", f"{h.matrix_lr * h.batch_lr_scale:.5f}", f"{h.matrix_lr} x batch"),
        ("embedding LR", f"{h.embedding_lr * h.batch_lr_scale * h.dmodel_lr_scale:.5f}", f"{h.embedding_lr} x b x w"),
        (
            "unembedding LR",
            f"{h.unembedding_lr * h.batch_lr_scale * h.dmodel_lr_scale:.6f}",
            f"{h.unembedding_lr} x b x w",
        ),
        ("scalar LR", f"{h.scalar_lr * h.batch_lr_scale:.5f}", f"{h.scalar_lr} x batch"),
        ("Muon weight decay", f"{h.weight_decay:.4f}", f"{h.weight_decay_ref} x sqrt(B/2^19) x D_d12/D, cosine->0"),
        ("steps", f"{h.num_iterations:,}", f"from {h.horizon_source}"),
        ("train tokens", f"{h.train_tokens:,}", f"{h.train_tokens / h.num_scaling_params:.2f} x N"),
        ("train FLOPs", f"{h.train_flops:.3e}", ""),
        ("warmup / warmdown", f"{h.warmup_steps} steps / {h.warmdown_ratio}", f"to {h.final_lr_frac} x LR"),
        ("Muon momentum", "0.85 -> 0.97 -> 0.90", f"warmup {h.momentum_warmup_steps} steps, down in warmdown"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)
