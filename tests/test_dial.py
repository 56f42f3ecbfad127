"""The depth dial (nanochat/dial.py) against a table written down by hand, and its schedules."""

import math

import pytest

from nanochat.dial import derive_hparams, format_hparams_table, lr_multiplier, muon_momentum, muon_weight_decay

# Worked by hand from nanochat.md 2.1-2.6 for vocab 32,768, T = 2048, SSSL, ratio 12, aspect 64, head_dim 128:
#   N = 12 L d^2 (q, k, v, o, MLP) + V d (lm_head); N(d12) = 110,100,480
#   B = 2^round(log2(2^19 (N / N_d12)^0.383)); steps = 12 N // B; lr scale = sqrt(B / 2^19)
#   wd = 0.28 sqrt(B / 2^19) N_d12 / N; FLOPs/token = 6 N + 12 H 128 sum_layers(window), S = 512, last layer L
# (the model may add tiny matrices such as value-embedding gates: hence the 0.1% tolerance on N and FLOPs)
# depth: (n_embd, n_head, N_scaling, batch, steps, batch_lr_scale, muon_wd, flops_per_token)
HAND_TABLE = {
    4: (256, 2, 11_534_336, 262_144, 528, 0.70711, 1.88990, 8.0216e7),
    12: (768, 6, 110_100_480, 524_288, 2_520, 1.0, 0.28000, 7.5969e8),
    20: (1280, 10, 435_159_040, 1_048_576, 4_980, 1.41421, 0.10019, 2.8862e9),
    26: (1664, 13, 918_421_504, 1_048_576, 10_510, 1.41421, 0.04747, 5.9910e9),
}


@pytest.mark.parametrize("depth", sorted(HAND_TABLE))
def test_dial_matches_hand_table(depth):
    """--depth alone gives the width, heads, batch, horizon, LR scale, weight decay and FLOPs of the hand table."""
    n_embd, n_head, N, batch, steps, lr_scale, wd, flops = HAND_TABLE[depth]
    h = derive_hparams(depth, vocab_size=32768)
    assert (h.n_embd, h.n_head, h.n_kv_head, h.head_dim) == (n_embd, n_head, n_head, 128)
    assert h.num_scaling_params == pytest.approx(N, rel=1e-3)
    assert h.total_batch_size == batch
    assert h.num_iterations == steps
    assert h.horizon_source == "param_data_ratio"
    assert h.batch_lr_scale == pytest.approx(lr_scale, rel=1e-4)
    assert h.weight_decay == pytest.approx(wd, rel=2e-3)
    assert h.dmodel_lr_scale == pytest.approx((n_embd / 768) ** -0.5)
    assert h.flops_per_token == pytest.approx(flops, rel=1e-3)
    assert h.train_tokens == steps * batch
    assert h.model_config["n_layer"] == depth and h.model_config["sequence_len"] == 2048


def test_odd_depth_rounds_width_up_to_whole_heads():
    """d25: 25 x 64 = 1600 is rounded up to 13 heads of 128 = 1664."""
    h = derive_hparams(25, vocab_size=32768)
    assert (h.n_embd, h.n_head) == (1664, 13)


def test_horizon_priority_and_explicit_batch():
    """num_iterations beats target_flops beats the ratio; an explicit batch is kept and sets the LR scale."""
    h = derive_hparams(4, vocab_size=32768, num_iterations=7, target_flops=1e18, total_batch_size=2**16)
    assert (h.num_iterations, h.horizon_source, h.total_batch_size) == (7, "num_iterations", 2**16)
    assert h.batch_lr_scale == pytest.approx(math.sqrt(2**16 / 2**19))
    h = derive_hparams(4, vocab_size=32768, target_flops=1e17)
    assert h.horizon_source == "target_flops"
    assert h.num_iterations == round(1e17 / (h.flops_per_token * h.total_batch_size))
    # the weight decay is planned for the ratio's token budget, not for the horizon
    assert h.weight_decay == pytest.approx(derive_hparams(4, vocab_size=32768).weight_decay)


def test_tiny_shapes_for_cpu_tests():
    """aspect_ratio/head_dim shrink the model (d2 -> 64 wide, 2 heads) and the table prints."""
    h = derive_hparams(2, vocab_size=300, sequence_len=32, aspect_ratio=32, head_dim=32, window_pattern="L")
    assert (h.n_embd, h.n_head, h.head_dim) == (64, 2, 32)
    table = format_hparams_table(h)
    assert "N scaling" in table and "Muon weight decay" in table


def test_lr_schedule_key_steps():
    """Warmup (s+1)/40, flat, then linear warmdown over the last 65% of 1000 steps to 0.05."""
    kw = {"num_iterations": 1000, "warmup_steps": 40, "warmdown_ratio": 0.65, "final_lr_frac": 0.05}
    assert lr_multiplier(0, **kw) == pytest.approx(0.025)
    assert lr_multiplier(39, **kw) == pytest.approx(1.0)
    assert lr_multiplier(350, **kw) == pytest.approx(1.0)  # warmdown covers steps 351..1000
    assert lr_multiplier(351, **kw) == pytest.approx(649 / 650 + (1 / 650) * 0.05)
    assert lr_multiplier(675, **kw) == pytest.approx(0.525)
    assert lr_multiplier(1000, **kw) == pytest.approx(0.05)


def test_momentum_and_weight_decay_schedules():
    """Muon momentum 0.85 -> 0.97 over 400 steps, 0.97 -> 0.90 across the warmdown; WD cosine to 0."""
    kw = {"num_iterations": 2000, "warmdown_ratio": 0.65}
    assert muon_momentum(0, **kw) == pytest.approx(0.85)
    assert muon_momentum(200, **kw) == pytest.approx(0.91)
    assert muon_momentum(400, **kw) == pytest.approx(0.97)
    assert muon_momentum(700, **kw) == pytest.approx(0.97)  # warmdown starts after step 700
    assert muon_momentum(1350, **kw) == pytest.approx(0.935)
    assert muon_momentum(2000, **kw) == pytest.approx(0.90)
    assert muon_weight_decay(0, 2000, 0.28) == pytest.approx(0.28)
    assert muon_weight_decay(1000, 2000, 0.28) == pytest.approx(0.14)
    assert muon_weight_decay(2000, 2000, 0.28) == pytest.approx(0.0, abs=1e-12)
