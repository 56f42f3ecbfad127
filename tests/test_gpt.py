"""Tests of nanochat/gpt.py on tiny CPU models (fp32): attention paths, KV cache, init, accounting, training."""

import itertools
import math

import pytest
import torch

from nanochat import gpt
from nanochat.gpt import GPT, GPTConfig, KVCache, naive_attention, sdpa_attention, sdpa_attention_with_kvcache

VOCAB = 97


def make_config(n_kv_head=1, **kwargs):
    return GPTConfig(sequence_len=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=n_kv_head, n_embd=64, **kwargs)


def make_model(n_kv_head=1, windows=None, randomize=True, seed=0):
    """A tiny model; `randomize` replaces the zero/tiny init so that attention and the head really matter."""
    torch.manual_seed(seed)
    model = GPT(make_config(n_kv_head))
    model.init_weights()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2 and "embed" not in name and "wte" not in name:
                    p.copy_(torch.randn_like(p) / math.sqrt(p.size(1)))
    if windows is not None:
        model.window_sizes = list(windows)  # the config derives windows from sequence_len; tests want short ones
    model.eval()
    return model


@pytest.fixture(autouse=True)
def _sdpa_backend(monkeypatch):
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "sdpa")


# -----------------------------------------------------------------------------
# attention kernels


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("window", [0, 3, 7, 15, 100])
def test_sdpa_matches_naive_attention(n_kv_head, window):
    """SDPA (is_causal fast path and the windowed dense mask, MHA/GQA/MQA) equals the written-out softmax."""
    torch.manual_seed(0)
    B, T, H, D = 2, 16, 4, 8
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, n_kv_head, D), torch.randn(B, T, n_kv_head, D)
    torch.testing.assert_close(sdpa_attention(q, k, v, window), naive_attention(q, k, v, window), atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [2, 5, 100])
def test_sdpa_kvcache_matches_naive_attention(window):
    """The cached SDPA path writes k/v at per-row positions and masks causally and by window per row."""
    torch.manual_seed(0)
    B, Tq, Tmax, H, Hkv, D = 3, 4, 20, 4, 2, 8
    lens = torch.tensor([0, 5, 11])
    k_full, v_full = torch.randn(B, Tmax, Hkv, D), torch.randn(B, Tmax, Hkv, D)
    q = torch.randn(B, Tq, H, D)
    k_cache, v_cache = torch.zeros(B, Tmax, Hkv, D), torch.zeros(B, Tmax, Hkv, D)
    k_new, v_new = torch.empty(B, Tq, Hkv, D), torch.empty(B, Tq, Hkv, D)
    for b in range(B):
        n = int(lens[b])
        k_cache[b, :n], v_cache[b, :n] = k_full[b, :n], v_full[b, :n]
        k_new[b], v_new[b] = k_full[b, n : n + Tq], v_full[b, n : n + Tq]
    y = sdpa_attention_with_kvcache(q, k_new, v_new, k_cache, v_cache, lens, window)
    for b in range(B):
        n = int(lens[b])
        ref = naive_attention(q[b : b + 1], k_full[b : b + 1, : n + Tq], v_full[b : b + 1, : n + Tq], window)
        torch.testing.assert_close(y[b : b + 1], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(k_cache[b, : n + Tq], k_full[b, : n + Tq])


def test_attention_backend_resolution(monkeypatch):
    """Auto-selection picks SDPA off Hopper/bf16 and says why; the override is honoured."""
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", None)
    monkeypatch.setattr(gpt, "_resolved_backends", {})
    assert gpt.get_attention_backend(torch.device("cpu"), torch.float32) == "sdpa"
    monkeypatch.setattr(gpt, "ATTENTION_BACKEND", "sdpa")
    assert gpt.get_attention_backend(torch.device("cpu"), torch.float32) == "sdpa"


# -----------------------------------------------------------------------------
# model forward


@pytest.mark.parametrize("windows", [None, (4, 32), (3, 3)])
def test_causality(windows):
    """Changing tokens from position p on never changes logits before p (full and windowed attention)."""
    model = make_model(windows=windows)
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, 32))
    logits = model(idx)
    for p in (1, 10, 31):
        idx2 = idx.clone()
        idx2[:, p:] = (idx2[:, p:] + 1 + torch.randint(0, VOCAB - 1, idx2[:, p:].shape)) % VOCAB
        logits2 = model(idx2)
        torch.testing.assert_close(logits2[:, :p], logits[:, :p], atol=1e-6, rtol=0)
        assert (logits2[:, p] - logits[:, p]).abs().max() > 1e-3  # the change is visible where it happens


def test_window_limits_receptive_field():
    """With window w in both layers a token influences only the next 2w positions (two hops of w)."""
    w = 3
    model = make_model(windows=(w, w))
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB, (1, 32))
    p = 5
    idx2 = idx.clone()
    idx2[0, p] = (idx2[0, p] + 1) % VOCAB
    diff = (model(idx2) - model(idx)).abs().amax(dim=-1)[0]  # (T,)
    assert diff[:p].max() == 0
    assert diff[p + 2 * w] > 1e-4
    assert diff[p + 2 * w + 1 :].max() < 1e-6


def test_loss_at_init_is_log_vocab():
    """With the real init (tiny lm_head, zero output projections) the loss starts at ln(vocab)."""
    model = make_model(randomize=False)
    idx = torch.randint(0, VOCAB, (4, 32))
    loss = model(idx, idx)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1


def test_loss_reduction_and_ignore_index():
    """reduction='none' gives (B, T) per-token losses, 0 at targets -1; 'mean' averages the others."""
    model = make_model()
    idx = torch.randint(0, VOCAB, (2, 32))
    targets = idx.clone()
    targets[0, :7] = -1
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (2, 32)
    assert (per_token[0, :7] == 0).all()
    torch.testing.assert_close(model(idx, targets), per_token[targets != -1].mean())


def test_logits_shape_and_softcap():
    """Logits are fp32, cropped to vocab_size, and bounded by the softcap even with huge weights."""
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    logits = model(torch.randint(0, VOCAB, (2, 32)))
    assert logits.shape == (2, 32, VOCAB) and logits.dtype == torch.float32
    assert model.padded_vocab_size == 128
    assert logits.abs().max() <= gpt.SOFTCAP
    assert logits.abs().max() > 0.9 * gpt.SOFTCAP


# -----------------------------------------------------------------------------
# KV cache


def new_cache(model, batch_size, seq_len=32):
    c = model.config
    return KVCache(batch_size, seq_len, c.n_kv_head, model.head_dim, c.n_layer, "cpu", model.compute_dtype)


@pytest.mark.parametrize("n_kv_head,windows", [(1, (5, 32)), (2, None)])
def test_kvcache_prefill_and_decode_match_no_cache(n_kv_head, windows):
    """Prefill then one token at a time, and prefill in uneven chunks, give the no-cache logits."""
    model = make_model(n_kv_head=n_kv_head, windows=windows)
    torch.manual_seed(3)
    idx = torch.randint(0, VOCAB, (2, 24))
    ref = model(idx)
    cache = new_cache(model, 2)
    out = [model(idx[:, :12], kv_cache=cache)]
    for t in range(12, 24):
        out.append(model(idx[:, t : t + 1], kv_cache=cache))
    torch.testing.assert_close(torch.cat(out, dim=1), ref, atol=1e-5, rtol=0)
    assert cache.cache_seqlens.tolist() == [24, 24]
    cache.reset()
    out, start = [], 0
    for size in (5, 7, 1, 11):
        out.append(model(idx[:, start : start + size], kv_cache=cache))
        start += size
    torch.testing.assert_close(torch.cat(out, dim=1), ref, atol=1e-5, rtol=0)


def test_kvcache_rows_at_different_positions():
    """Rows copied from separate prefills (copy_from) decode at their own positions and match no-cache logits."""
    model = make_model(windows=(4, 32))
    torch.manual_seed(4)
    seq_a, seq_b = torch.randint(0, VOCAB, (1, 14)), torch.randint(0, VOCAB, (1, 20))
    ref_a, ref_b = model(seq_a), model(seq_b)
    cache_a, cache_b = new_cache(model, 1), new_cache(model, 1)
    model(seq_a[:, :9], kv_cache=cache_a)
    model(seq_b[:, :14], kv_cache=cache_b)
    cache = new_cache(model, 2)
    cache.copy_from(cache_a, src_row=0, dst_rows=[0])
    cache.copy_from(cache_b, src_row=0, dst_rows=[1])
    assert cache.cache_seqlens.tolist() == [9, 14]
    for t in range(3):  # single-token decode
        col = torch.stack([seq_a[0, 9 + t], seq_b[0, 14 + t]])[:, None]
        logits = model(col, kv_cache=cache)
        torch.testing.assert_close(logits[0, 0], ref_a[0, 9 + t], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1, 0], ref_b[0, 14 + t], atol=1e-5, rtol=0)
    chunk = torch.stack([seq_a[0, 12:14], seq_b[0, 17:19]])  # a two-token step, rows still at different positions
    logits = model(chunk, kv_cache=cache)
    torch.testing.assert_close(logits[0], ref_a[0, 12:14], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], ref_b[0, 17:19], atol=1e-5, rtol=0)
    assert cache.cache_seqlens.tolist() == [14, 19]


def test_kvcache_overflow_fails_loudly():
    """Writing past the cache's capacity raises instead of silently wrapping."""
    model = make_model()
    cache = new_cache(model, 1, seq_len=8)
    with pytest.raises(AssertionError, match="KV cache overflow"):
        model(torch.randint(0, VOCAB, (1, 9)), kv_cache=cache)


# -----------------------------------------------------------------------------
# init, accounting


def test_meta_build_and_deterministic_init():
    """Meta build + to_empty + init_weights works, is deterministic under a seed, and equals a direct CPU build."""

    def build(meta):
        torch.manual_seed(123)
        if meta:
            with torch.device("meta"):
                model = GPT(make_config())
            model.to_empty(device="cpu")
        else:
            model = GPT(make_config())
        model.init_weights()
        return model

    a, b, c = build(True), build(True), build(False)
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert "cos" not in sd_a  # rotary tables are derived buffers, not checkpointed
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]) and torch.equal(sd_a[key], sd_c[key]), key
    assert torch.isfinite(a.cos).all() and torch.equal(a.cos, c.cos)
    assert a.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert a.wte.weight.std().item() == pytest.approx(0.8, rel=0.1)
    assert (a.blocks[0].attn.c_proj.weight == 0).all() and (a.blocks[0].mlp.c_proj.weight == 0).all()
    torch.testing.assert_close(a.resid_lambdas, torch.tensor([1.15, 1.05]))
    torch.testing.assert_close(a.x0_lambdas, torch.tensor([0.20, 0.05]))


def test_accounting_tiny_config_by_hand():
    """num_scaling_params and estimate_flops equal numbers computed by hand for the tiny config."""
    model = make_model(randomize=False)
    # vocab 97 -> 128 padded; C=64, H=2, Hkv=1, D=32; value embeds on layer 1 only; both windows = T = 32
    per_layer = 64 * 64 + 2 * (32 * 64) + 64 * 64 + 2 * (256 * 64)  # q, k+v, o, fc+proj = 45,056
    expected = {
        "wte": 128 * 64,
        "value_embeds": 128 * 32,
        "lm_head": 128 * 64,
        "transformer_matrices": 2 * per_layer + 1 * 12,  # plus the 12 -> 1 value-embedding gate
        "scalars": 4,
    }
    expected["total"] = sum(expected.values())
    assert model.num_scaling_params() == expected
    assert expected["total"] == 110_608
    assert model.estimate_flops() == 6 * (90_124 + 8_192) + 2 * 12 * 64 * 32 == 639_048


def test_accounting_d12_matches_reference():
    """A d12 (built on meta) has nanochat's d12 counts minus smear/backout scalars and its FLOPs/token."""
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=12, n_head=6, n_kv_head=6, n_embd=768, sequence_len=2048, vocab_size=32768))
    counts = model.num_scaling_params()
    assert counts["total"] == 286_261_730 - 26  # reference total includes 24 + 1 + 1 smear/backout scalars
    assert counts["transformer_matrices"] + counts["lm_head"] == 110_100_912
    assert model.window_sizes == [512, 512, 512, 2048] * 3
    assert model.estimate_flops() == 6 * 110_100_912 + 12 * 768 * (3 * 2048 + 9 * 512)  # 7.597e8, reference 7.60e8


def test_window_sizes_from_pattern():
    """Pattern tiles over layers, the last layer is forced long, S = ceil(T/4/128)*128 capped at T."""
    cfg = GPTConfig(sequence_len=2048, n_layer=6, window_pattern="SSL")
    assert gpt.compute_window_sizes(cfg) == [512, 512, 2048, 512, 512, 2048]
    cfg = GPTConfig(sequence_len=1000, n_layer=3, window_pattern="S")
    assert gpt.compute_window_sizes(cfg) == [256, 256, 1000]
    cfg = GPTConfig(sequence_len=64, n_layer=2, window_pattern="S")
    assert gpt.compute_window_sizes(cfg) == [64, 64]


# -----------------------------------------------------------------------------
# optimizer groups, training, generation


def test_optimizer_groups():
    """setup_optimizer covers every parameter once, with the reference LRs, betas and width/batch scaling."""
    model = make_model(randomize=False)
    opt = model.setup_optimizer(batch_lr_scale=0.5)
    width = (64 / 768) ** -0.5
    adamw = [g for g in opt.param_groups if g["kind"] == "adamw"]
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert [g["initial_lr"] for g in adamw] == pytest.approx(
        [0.008 * width * 0.5, 0.3 * width * 0.5, 0.15 * width * 0.5, 0.005 * 0.5, 0.5 * 0.5]
    )
    assert [g["betas"] for g in adamw] == [(0.8, 0.96), (0.8, 0.995), (0.8, 0.995), (0.8, 0.95), (0.96, 0.95)]
    assert all(g["lr"] == pytest.approx(0.01) and len({p.shape for p in g["params"]}) == 1 for g in muon)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_training_steps_reduce_loss():
    """MuonAdamW steps (through the initial_lr schedule hook) on a fixed batch lower the loss at every step."""
    model = make_model(randomize=False)
    model.train()
    opt = model.setup_optimizer()
    torch.manual_seed(5)
    idx = torch.randint(0, VOCAB, (4, 32))
    losses = []
    for _ in range(10):
        # lr multiplier 0.2 stands in for warmup: at full LR and step 0, the x0_lambdas' AdamW (lr 0.5) turns
        # ~1e-10 init gradients into full-size steps and a memorized batch spikes (measured; real runs warm up)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * 0.2
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 1.5, losses


def test_generate_greedy_is_argmax_of_forward():
    """Naive greedy generation picks the argmax of the full forward at every step, and is seed-independent."""
    model = make_model()
    prompt = [1, 2, 3, 4]
    out = list(model.generate(prompt, max_tokens=6, temperature=0.0))
    ids = list(prompt)
    for tok in out:
        assert tok == model(torch.tensor([ids]))[0, -1].argmax().item()
        ids.append(tok)
    assert out == list(model.generate(prompt, max_tokens=6, temperature=0.0, seed=7))
    sampled = list(model.generate(prompt, max_tokens=6, top_k=5, seed=1))
    assert sampled == list(model.generate(prompt, max_tokens=6, top_k=5, seed=1))
    assert len(list(model.generate(list(range(30)), max_tokens=10))) == 2  # stops at a full context (32)


# -----------------------------------------------------------------------------
# GPU: FlashAttention-3 vs SDPA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fa3_matches_sdpa_on_gpu():
    """FA3 (when importable on Hopper) computes the same function as SDPA, windows, GQA and KV cache included."""
    if gpt._import_fa3() is None or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("FA3 not importable or not a Hopper GPU")
    torch.manual_seed(0)
    B, T, H, Hkv, D = 2, 256, 4, 2, 64
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16)
    for window in (31, 128, T):
        torch.testing.assert_close(
            gpt.fa3_attention(q, k, v, window), sdpa_attention(q, k, v, window), atol=2e-2, rtol=0
        )
    lens = torch.tensor([0, 100], device="cuda")
    caches = [torch.zeros(B, T + 8, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    y_fa3 = gpt.fa3_attention_with_kvcache(q[:, :8], k[:, :8], v[:, :8], caches[0], caches[1], lens, 31)
    y_sdpa = sdpa_attention_with_kvcache(q[:, :8], k[:, :8], v[:, :8], caches[2], caches[3], lens, 31)
    torch.testing.assert_close(y_fa3, y_sdpa, atol=2e-2, rtol=0)
    torch.testing.assert_close(caches[0], caches[2])
