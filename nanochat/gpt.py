"""
The GPT model: a decoder-only transformer with the modern small-model recipe, its FLOP and
parameter accounting, its optimizer groups, a KV cache for inference and a naive sampler.

Architecture choices (each kept because it is in the public nanochat recipe that we measure against):
- Untied token embedding `wte` and output head `lm_head`: input and output embeddings do different jobs;
  untying helps small models (modded-nanogpt, nanochat).
- Parameter-free RMSNorm everywhere (Zhang & Sennrich 2019, arXiv 1910.07467): cheaper than LayerNorm, and a
  learned gain is redundant with the matrix that follows it.
- Rotary position embeddings, half-split, base 100,000 (Su et al. 2021, arXiv 2104.09864): relative positions with
  no parameters; the large base keeps long-range angles distinguishable.
- QK-norm, then q and k times 1.2 (Dehghani et al. 2023, arXiv 2302.05442): bounded attention logits allow high
  learning rates; the 1.2 gain (1.44 on the logits) sharpens attention (nanochat).
- ReLU^2 MLP with 4x expansion (So et al. 2021 "Primer", arXiv 2109.08668): better than GELU at equal FLOPs;
  SwiGLU was tried in nanochat and did not win.
- No biases (PaLM, arXiv 2204.02311): no measurable gain, fewer parameters and kernels.
- Logit softcap 15*tanh(z/15) in fp32 (Gemma 2, arXiv 2408.00118): bounds the logits, stabilises training.
- GQA/MQA, n_kv_head divides n_head (Ainslie et al. 2023, arXiv 2305.13245): smaller KV cache for inference.
- Sliding-window attention by a per-layer pattern ("SSSL" tiled, last layer always "L") (Longformer,
  arXiv 2004.05150; Gemma 2): short layers cost a quarter of the attention FLOPs; long layers keep full context.
- Value embeddings on alternating layers, last layer included, mixed into v by a gate 3*sigmoid(W x[:12])
  per kv-head (ResFormer value residual, arXiv 2410.17897; modded-nanogpt): many cheap parameters, lookups only.
- Per-layer residual scalars: x <- resid_lambdas[i]*x + x0_lambdas[i]*x0 before each block, x0 the normalized
  embedding (modded-nanogpt; -0.004 to -0.010 bpb in nanochat's log).
- Zero-initialized output projections: every block starts as the identity on the residual stream.
- Left out until measured here: nanochat's "smear" bigram feature and "backout" residual subtraction.

Precision: master weights are fp32; activations run in `model.compute_dtype` (bf16 on CUDA, fp32 on CPU,
$NANOCHAT_DTYPE overrides) by casting each weight inside the linear forward: no autocast. Embedding tables are
stored in the compute dtype (they are the largest tensors and are only indexed). Logits, softcap and loss are fp32.

Attention runs on FlashAttention-3 on Hopper (bf16) and on PyTorch SDPA otherwise; the choice is made on first use
and printed once. `naive_attention` is the slow written-out reference both are tested against.
Window convention (as FlashAttention's window_size=(window, 0)): query at position i sees keys j with
0 <= i - j <= window, so `window >= T - 1` is plain causal attention.

torch.compile is applied by the training script; the no-cache forward has no data-dependent Python branches and no
host syncs (tests/test_chunked_ce.py traces it as one graph). With targets, the head and the loss run over chunks of
CE_CHUNK_ROWS rows, each recomputed in backward, so the (B*T, V) fp32 logits never exist at once.
FP8 for the large matmuls is a conversion applied from outside (nanochat/fp8.py); the accounting counts parameters,
not module classes, so it holds under FP8.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nanochat.common import get_compute_dtype, print0
from nanochat.muon import MuonAdamW


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"  # tiled over layers; S = quarter context (128-rounded), L = full; last layer is L


# -----------------------------------------------------------------------------
# Constants of the recipe

ROPE_BASE = 100_000
QK_GAIN = 1.2
SOFTCAP = 15.0
VE_GATE_CHANNELS = 12  # the value-embedding gate looks at the first 12 channels of the attention input
VOCAB_PAD = 64  # vocab rows padded to a multiple of this: friendlier matmul shapes, and divisible by the world size
ROTARY_POSITIONS_MULT = 10  # rotary tables cover 10x sequence_len positions (inference may run past training length)
CE_CHUNK_ROWS = 4096  # the loss runs over chunks of this many rows (tokens) when B*T is larger; 0 = never
CHECKPOINT_KWARGS = {"use_reentrant": False, "preserve_rng_state": False}  # the head draws no random numbers


# -----------------------------------------------------------------------------
# Small pure helpers


def norm(x):
    """Parameter-free RMSNorm over the last dimension, in the activation dtype."""
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """Bias-free linear whose fp32 master weight is cast to the activation dtype in forward (replaces autocast)."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self):
        pass  # GPT.init_weights() owns all initialization; this also keeps the global RNG untouched at build time

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class Embedding(nn.Embedding):
    def reset_parameters(self):
        pass  # see Linear.reset_parameters


def has_value_embedding(layer_idx, n_layer):
    """Alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


def compute_window_sizes(config):
    """Per-layer attention window (left distance, see module docstring) from the tiled pattern; last layer is L."""
    pattern = config.window_pattern.upper()
    assert pattern and set(pattern) <= {"S", "L"}, (
        f"window_pattern must be made of S and L, got {config.window_pattern!r}"
    )
    long_window = config.sequence_len
    short_window = min(math.ceil(config.sequence_len / 4 / 128) * 128, config.sequence_len)
    chars = [pattern[i % len(pattern)] for i in range(config.n_layer)]
    chars[-1] = "L"
    return [short_window if c == "S" else long_window for c in chars]


def precompute_rotary(seq_len, head_dim, device, base=ROPE_BASE):
    """cos, sin tables of shape (seq_len, head_dim // 2), fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rotary_emb(x, cos, sin):
    """Rotate the two halves of the head dim as (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos). x (B, T, H, D)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# -----------------------------------------------------------------------------
# Attention kernels: FlashAttention-3, SDPA, and the naive reference

ATTENTION_BACKEND = None  # override, "fa3" | "sdpa" | None (auto): set by bench_train --attention and by tests
_resolved_backends = {}  # (device type, dtype) -> "fa3" | "sdpa"; printed once when first resolved
_dense_mask_noted = False  # the SDPA dense-mask cost line is printed once per process
_window_masks = {}  # (T, window, device) -> (T, T) bool mask, True = may attend


_fa3_module = None  # flash_attn_interface once imported, False when it is not installed


def _import_fa3():
    """The FlashAttention-3 module or None; imported once (outside compiled code, see GPT.init_weights)."""
    global _fa3_module
    if _fa3_module is None:
        try:
            import flash_attn_interface  # the FlashAttention-3 (Hopper) package

            _fa3_module = flash_attn_interface
        except ImportError:
            _fa3_module = False
    return _fa3_module or None


def get_attention_backend(device, dtype):
    """'fa3' when flash_attn_interface imports, the device is Hopper (sm90) and dtype is bf16; else 'sdpa'."""
    if ATTENTION_BACKEND is not None:
        assert ATTENTION_BACKEND in ("fa3", "sdpa"), f"ATTENTION_BACKEND must be fa3, sdpa or None: {ATTENTION_BACKEND}"
        if ATTENTION_BACKEND == "fa3":
            assert _import_fa3() is not None, "ATTENTION_BACKEND='fa3' but flash_attn_interface does not import"
        return ATTENTION_BACKEND
    device = torch.device(device)
    key = (device.type, dtype)
    if key not in _resolved_backends:
        reason = None
        if device.type != "cuda":
            reason = f"device is {device.type}"
        elif torch.cuda.get_device_capability(device)[0] != 9:
            reason = (
                f"FA3 needs Hopper (sm90), device is sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
            )
        elif dtype != torch.bfloat16:
            reason = f"FA3 needs bf16, compute dtype is {dtype}"
        elif _import_fa3() is None:
            reason = "flash_attn_interface (FlashAttention-3) not installed"
        if reason is None:
            _resolved_backends[key] = "fa3"
            print0("attention: FlashAttention-3 (Hopper)")
        else:
            _resolved_backends[key] = "sdpa"
            print0(f"attention: PyTorch SDPA ({reason})")
    return _resolved_backends[key]


def note_dense_window_masks(backend, window_sizes, sequence_len):
    """One line, once per process, when SDPA will build dense masks: only for windows shorter than the sequence."""
    global _dense_mask_noted
    short = sorted({w for w in window_sizes if w < sequence_len - 1})  # window >= T - 1 is plain causal attention
    if backend == "sdpa" and short and not _dense_mask_noted:
        _dense_mask_noted = True
        print0(
            f"attention: SDPA has no sliding-window kernel: windows {short} < sequence {sequence_len} use a dense "
            "(T, T) mask (slower, more memory: consider --window-pattern L)"
        )


def naive_attention(q, k, v, window, q_pos=None):
    """
    Written-out masked softmax attention, the reference for the fast paths.
    q (B, Tq, H, D), k/v (B, Tk, Hkv, D) at key positions 0..Tk-1; q_pos (B, Tq) absolute query positions
    (default: the last Tq positions). Key j is visible to query position i iff 0 <= i - j <= window.
    Returns (B, Tq, H, D) in q's dtype; math in fp32.
    """
    B, Tq, H, D = q.shape
    Tk, Hkv = k.size(1), k.size(2)
    if q_pos is None:
        q_pos = (Tk - Tq + torch.arange(Tq, device=q.device)).expand(B, Tq)
    k = k.float().repeat_interleave(H // Hkv, dim=2)  # (B, Tk, H, D): query head h reads kv head h // (H // Hkv)
    v = v.float().repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) / math.sqrt(D)  # (B, H, Tq, Tk)
    dist = q_pos[:, :, None] - torch.arange(Tk, device=q.device)[None, None, :]  # (B, Tq, Tk)
    visible = (dist >= 0) & (dist <= window)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v).to(q.dtype)


def _sliding_window_mask(T, window, device):
    """(T, T) bool, True where query i may see key j (causal, within the window); cached outside of compile."""
    key = (T, window, str(device))
    if key in _window_masks and not torch.compiler.is_compiling():
        return _window_masks[key]
    idx = torch.arange(T, device=device)
    dist = idx[:, None] - idx[None, :]
    mask = (dist >= 0) & (dist <= window)
    if not torch.compiler.is_compiling():  # under compile the mask is part of the graph (a cheap iota compare)
        _window_masks[key] = mask
    return mask


def sdpa_attention(q, k, v, window):
    """Causal (windowed) attention without a cache. q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D)."""
    T = q.size(1)
    enable_gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if window >= T - 1:  # the window covers the whole sequence: plain causal, no dense mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    else:
        mask = _sliding_window_mask(T, window, q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=enable_gqa)
    return y.transpose(1, 2)


def sdpa_attention_with_kvcache(q, k, v, k_cache, v_cache, cache_seqlens, window):
    """
    Writes k/v into the cache at each row's positions, then attends over the cache.
    q (B, Tq, H, D), k/v (B, Tq, Hkv, D), k_cache/v_cache (B, Tmax, Hkv, D), cache_seqlens (B,) int64.
    Row b's queries sit at positions cache_seqlens[b] + t; cache slots past a row's length are masked.
    """
    B, Tq = q.shape[:2]
    Tmax = k_cache.size(1)
    t = torch.arange(Tq, device=q.device)
    q_pos = cache_seqlens[:, None] + t  # (B, Tq)
    rows = torch.arange(B, device=q.device)[:, None]
    k_cache[rows, q_pos] = k.to(k_cache.dtype)
    v_cache[rows, q_pos] = v.to(v_cache.dtype)
    dist = q_pos[:, :, None] - torch.arange(Tmax, device=q.device)  # (B, Tq, Tmax)
    mask = ((dist >= 0) & (dist <= window))[:, None]  # (B, 1, Tq, Tmax)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k_cache.transpose(1, 2),
        v_cache.transpose(1, 2),
        attn_mask=mask,
        enable_gqa=q.size(2) != k.size(2),
    )
    return y.transpose(1, 2)


def fa3_attention(q, k, v, window):
    out = _import_fa3().flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    return out[0] if isinstance(out, tuple) else out


def fa3_attention_with_kvcache(q, k, v, k_cache, v_cache, cache_seqlens, window):
    out = _import_fa3().flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens.to(torch.int32), causal=True, window_size=(window, 0)
    )  # writes k/v into the cache in place at each row's position
    return out[0] if isinstance(out, tuple) else out


# -----------------------------------------------------------------------------
# KV cache


class KVCache:
    """
    Preallocated keys and values for all layers, (n_layer, B, seq_len, n_kv_head, head_dim) each, plus the number of
    filled positions per row. Rows may sit at different positions (per-row rotary and masking).
    The model writes each layer's new k/v and advances cache_seqlens by T after its last layer.
    """

    def __init__(self, batch_size, seq_len, n_kv_head, head_dim, n_layer, device, dtype):
        self.batch_size, self.seq_len = batch_size, seq_len
        shape = (n_layer, batch_size, seq_len, n_kv_head, head_dim)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.cache_seqlens = torch.zeros(batch_size, dtype=torch.int64, device=device)

    def reset(self):
        self.cache_seqlens.zero_()

    def get_layer_cache(self, layer_idx):
        return self.k_cache[layer_idx], self.v_cache[layer_idx]

    def advance(self, num_tokens):
        self.cache_seqlens += num_tokens

    def copy_from(self, src, src_row=0, dst_rows=None):
        """Copy row src_row of another cache (e.g. a batch-1 prefill) into dst_rows of this one (default: all)."""
        dst_rows = list(range(self.batch_size)) if dst_rows is None else list(dst_rows)
        n = int(src.cache_seqlens[src_row])
        assert n <= self.seq_len, f"source row holds {n} positions, this cache has room for {self.seq_len}"
        assert src.k_cache.shape[0] == self.k_cache.shape[0] and src.k_cache.shape[3:] == self.k_cache.shape[3:], (
            f"cache layouts differ: {tuple(src.k_cache.shape)} vs {tuple(self.k_cache.shape)}"
        )
        for r in dst_rows:
            self.k_cache[:, r, :n] = src.k_cache[:, src_row, :n]
            self.v_cache[:, r, :n] = src.v_cache[:, src_row, :n]
            self.cache_seqlens[r] = n


# -----------------------------------------------------------------------------
# Modules


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        C, D = config.n_embd, self.head_dim
        self.c_q = Linear(C, self.n_head * D)
        self.c_k = Linear(C, self.n_kv_head * D)
        self.c_v = Linear(C, self.n_kv_head * D)
        self.c_proj = Linear(C, C)
        self.ve_gate = (
            Linear(VE_GATE_CHANNELS, self.n_kv_head) if has_value_embedding(layer_idx, config.n_layer) else None
        )

    def forward(self, x, ve, cos_sin, window, kv_cache):
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.c_q(x).view(B, T, H, D)
        k = self.c_k(x).view(B, T, Hkv, D)
        v = self.c_v(x).view(B, T, Hkv, D)
        if ve is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv), in (0, 3)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, Hkv, D)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q) * QK_GAIN, norm(k) * QK_GAIN
        backend = get_attention_backend(x.device, x.dtype)
        if kv_cache is None:
            y = fa3_attention(q, k, v, window) if backend == "fa3" else sdpa_attention(q, k, v, window)
        else:
            k_cache, v_cache = kv_cache.get_layer_cache(self.layer_idx)
            fn = fa3_attention_with_kvcache if backend == "fa3" else sdpa_attention_with_kvcache
            y = fn(q, k, v, k_cache, v_cache, kv_cache.cache_seqlens, window)
        y = y.contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window, kv_cache):
        x = x + self.attn(norm(x), ve, cos_sin, window, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        C, H, Hkv = config.n_embd, config.n_head, config.n_kv_head
        assert C % H == 0, f"n_embd {C} must be divisible by n_head {H}"
        assert H % Hkv == 0, f"n_kv_head {Hkv} must divide n_head {H}"
        self.head_dim = C // H
        assert self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for rotary embeddings"
        assert C >= VE_GATE_CHANNELS, f"n_embd {C} must be >= {VE_GATE_CHANNELS} (value-embedding gate input)"
        self.padded_vocab_size = math.ceil(config.vocab_size / VOCAB_PAD) * VOCAB_PAD
        self.window_sizes = compute_window_sizes(config)
        V, kv_dim = self.padded_vocab_size, Hkv * self.head_dim
        self.wte = Embedding(V, C)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.value_embeds = nn.ModuleDict(
            {str(i): Embedding(V, kv_dim) for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)}
        )
        self.lm_head = Linear(C, V)
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))
        # rotary tables are derived, not learned: non-persistent buffers, (re)filled by init_weights()
        self.rotary_len = ROTARY_POSITIONS_MULT * config.sequence_len
        self.register_buffer("cos", torch.empty(self.rotary_len, self.head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(self.rotary_len, self.head_dim // 2), persistent=False)
        self.compute_dtype = torch.float32  # set for the real device by init_weights()
        self.ce_chunk_rows = CE_CHUNK_ROWS  # 0 = one (B*T, V) logits tensor (bench_train measures both)

    @torch.no_grad()
    def init_weights(self):
        """
        All initialization in one place. Works after `GPT(config)` under `torch.device("meta")` + `to_empty()`.
        Also fills the rotary tables, sets compute_dtype for the device and stores embeddings in that dtype.
        Call it before load_state_dict() too (the rotary tables are not in the state dict).
        """
        device = self.wte.weight.device
        self.compute_dtype = get_compute_dtype(device.type)
        C = self.config.n_embd
        # embeddings are initialized in fp32 (so init is identical whatever the compute dtype), cast at the end
        self.wte.float()
        self.value_embeds.float()
        s = 3**0.5 * C**-0.5  # uniform bound with std 1/sqrt(C)
        self.wte.weight.normal_(0.0, 0.8)
        self.lm_head.weight.normal_(0.0, 0.001)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            for lin in (attn.c_q, attn.c_k, attn.c_v):
                lin.weight.uniform_(-s, s)
            mlp.c_fc.weight.uniform_(-0.4 * s, 0.4 * s)
            attn.c_proj.weight.zero_()
            mlp.c_proj.weight.zero_()
            if attn.ve_gate is not None:
                attn.ve_gate.weight.uniform_(0.0, 0.02)  # gate starts near 3*sigmoid(0) = 1.5
        for ve in self.value_embeds.values():
            ve.weight.uniform_(-s, s)
        L = self.config.n_layer
        frac = torch.arange(L, dtype=torch.float32, device=device) / max(L - 1, 1)
        self.resid_lambdas.copy_(1.15 - 0.10 * frac)
        self.x0_lambdas.copy_(0.20 - 0.15 * frac)
        cos, sin = precompute_rotary(self.rotary_len, self.head_dim, device)
        self.cos, self.sin = cos.to(self.compute_dtype), sin.to(self.compute_dtype)
        if self.compute_dtype != torch.float16:  # fp16 GradScaler cannot unscale fp16 gradients: keep those fp32
            self.wte.to(self.compute_dtype)
            self.value_embeds.to(self.compute_dtype)
        # resolve and print the attention backend outside compile, and what SDPA costs for this model's windows
        backend = get_attention_backend(device, self.compute_dtype)
        note_dense_window_masks(backend, self.window_sizes, self.config.sequence_len)

    def get_device(self):
        return self.wte.weight.device

    # -- accounting ---------------------------------------------------------

    def num_scaling_params(self):
        """Parameter counts by kind; the training horizon uses transformer_matrices + lm_head."""
        counts = {
            "wte": self.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.blocks.parameters()),
            "scalars": self.resid_lambdas.numel() + self.x0_lambdas.numel(),
        }
        counts["total"] = sum(counts.values())
        assert counts["total"] == sum(p.numel() for p in self.parameters()), "a parameter is missing from the count"
        return counts

    def estimate_flops(self):
        """
        Training FLOPs per token: 6 per matmul weight (forward 2, backward 4; embedding lookups are free) plus
        attention, 12 * H * D * (keys seen) per layer, keys seen = min(window, sequence_len).
        """
        counts = self.num_scaling_params()
        matmul_params = counts["transformer_matrices"] + counts["lm_head"]
        T, H, D = self.config.sequence_len, self.config.n_head, self.head_dim
        attn_flops = sum(12 * H * D * min(w, T) for w in self.window_sizes)
        return 6 * matmul_params + attn_flops

    # -- optimizer ----------------------------------------------------------

    def setup_optimizer(
        self,
        matrix_lr=0.02,
        embedding_lr=0.3,
        unembedding_lr=0.008,
        scalar_lr=0.5,
        weight_decay=0.0,
        dmodel_lr_scale=True,
        batch_lr_scale=1.0,
    ):
        """
        AdamW for embeddings, head and scalars (each with its own LR, betas, decay), Muon for every matrix inside
        the blocks, one Muon group per matrix shape. LRs of the embedding-type groups scale as (n_embd/768)^-0.5;
        batch_lr_scale multiplies every group.
        """
        width = (self.config.n_embd / 768) ** -0.5 if dmodel_lr_scale else 1.0
        b = batch_lr_scale

        def adamw(name, params, lr, betas, weight_decay):
            return {
                "name": name,
                "kind": "adamw",
                "params": params,
                "lr": lr,
                "betas": betas,
                "eps": 1e-10,
                "weight_decay": weight_decay,
            }

        ve_params = list(self.value_embeds.parameters())
        groups = [
            adamw("lm_head.weight", [self.lm_head.weight], unembedding_lr * width * b, (0.8, 0.96), 0.01),
            adamw("wte.weight", [self.wte.weight], embedding_lr * width * b, (0.8, 0.995), 0.001),
            adamw("value_embeds.*.weight", ve_params, 0.5 * embedding_lr * width * b, (0.8, 0.995), 0.01),
            adamw("resid_lambdas", [self.resid_lambdas], 0.01 * scalar_lr * b, (0.8, 0.95), 0.05),
            adamw("x0_lambdas", [self.x0_lambdas], scalar_lr * b, (0.96, 0.95), 0.0),
        ]
        by_shape, names_by_shape = {}, {}
        for name, p in self.blocks.named_parameters():  # name e.g. "3.attn.c_q.weight"
            by_shape.setdefault(tuple(p.shape), []).append(p)
            names_by_shape.setdefault(tuple(p.shape), {})[name.split(".", 1)[1].removesuffix(".weight")] = None
        for shape in sorted(by_shape):
            groups.append(
                {
                    # e.g. "blocks.*.{attn.c_q, attn.c_proj}.weight (768, 768)": the matrices of one shape
                    "name": f"blocks.*.{{{', '.join(names_by_shape[shape])}}}.weight {shape}",
                    "kind": "muon",
                    "params": by_shape[shape],
                    "lr": matrix_lr * b,
                    "momentum": 0.95,
                    "weight_decay": weight_decay,
                    "beta2": 0.9,
                }
            )
        n_grouped = sum(len(g["params"]) for g in groups)
        assert n_grouped == len(list(self.parameters())), f"{n_grouped} params in groups, model has more or fewer"
        return MuonAdamW(groups)

    # -- forward ------------------------------------------------------------

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        B, T = idx.shape
        if kv_cache is None:
            assert T <= self.rotary_len, f"sequence of {T} tokens exceeds the rotary table ({self.rotary_len})"
            cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]  # (1, T, 1, D/2)
        else:
            assert B == kv_cache.batch_size, f"batch {B} but the KV cache has {kv_cache.batch_size} rows"
            end = int(kv_cache.cache_seqlens.max()) + T
            assert end <= kv_cache.seq_len, f"KV cache overflow: need {end} positions, cache holds {kv_cache.seq_len}"
            assert end <= self.rotary_len, f"position {end} exceeds the rotary table ({self.rotary_len})"
            pos = kv_cache.cache_seqlens[:, None] + torch.arange(T, device=idx.device)  # (B, T)
            cos, sin = self.cos[pos][:, :, None, :], self.sin[pos][:, :, None, :]  # (B, T, 1, D/2)

        x = norm(self.wte(idx).to(self.compute_dtype))  # (B, T, C)
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i].to(x.dtype) * x + self.x0_lambdas[i].to(x.dtype) * x0
            ve = self.value_embeds[str(i)](idx).to(x.dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, (cos, sin), self.window_sizes[i], kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = norm(x)

        if targets is None:
            return self.head_logits(x)
        assert loss_reduction in ("mean", "sum", "none"), f"unknown loss_reduction {loss_reduction!r}"
        x, targets = x.view(B * T, -1), targets.reshape(B * T)
        n = self.ce_chunk_rows
        if n and B * T > n:
            # Row chunks whose logits are recomputed in backward instead of stored: at most one chunk's (n, V) fp32
            # logits exist at a time (all of them: B*T*V*4 bytes, 8.6 GB at B=32, T=2048, V=32768). The price is
            # one more lm_head forward, 2*C*V FLOPs per token that estimate_flops() leaves out.
            head_loss = self.head_loss
            if torch.is_grad_enabled():
                head_loss = functools.partial(checkpoint, self.head_loss, **CHECKPOINT_KWARGS)
            loss = torch.cat([head_loss(x[i : i + n], targets[i : i + n]) for i in range(0, B * T, n)])
        else:
            loss = self.head_loss(x, targets)
        if loss_reduction == "none":
            return loss.view(B, T)
        loss = loss.sum()
        return loss if loss_reduction == "sum" else loss / (targets >= 0).sum()  # mean over non-ignored, no sync

    def head_logits(self, x):
        """(..., C) normalized hidden states -> softcapped fp32 logits (..., vocab_size), the padding cropped."""
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    def head_loss(self, x, targets):
        """(N, C), (N,) -> (N,) cross-entropy in nats of the softcapped logits, 0 where the target is -1."""
        return F.cross_entropy(self.head_logits(x), targets, ignore_index=-1, reduction="none")

    # -- naive generation (reference for the engine) ------------------------

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """
        Batch-1 sampling by recomputing the full forward for every token (no cache): slow, obviously correct.
        Yields token ids; stops after max_tokens or when the context reaches sequence_len.
        """
        assert isinstance(tokens, list) and len(tokens) > 0
        device = self.get_device()
        rng = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            if ids.size(1) >= self.config.sequence_len:
                return
            logits = self.forward(ids)[:, -1, :]  # (1, V)
            if top_k is not None and top_k > 0:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=rng)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
            yield next_id.item()
