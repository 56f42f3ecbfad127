"""Tests of nanochat/muon.py on CPU: Polar Express, Muon vs a per-matrix loop, AdamW vs torch, 2-rank sharding."""

import copy
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat.muon import POLAR_EXPRESS_COEFFS, MuonAdamW, polar_express

# -----------------------------------------------------------------------------
# A plain per-matrix reference of the Muon step, written out without stacking, lerp or broadcasting tricks


def reference_muon_step(p, g, state, lr, momentum, weight_decay, beta2):
    """One Muon step on a single (m, n) matrix p with gradient g; state holds 'buf' and 'v'. Updates p in place."""
    m, n = p.shape
    if not state:
        state["buf"] = torch.zeros(m, n)
        state["v"] = torch.zeros(m, 1) if m >= n else torch.zeros(1, n)
    state["buf"] = momentum * state["buf"] + (1 - momentum) * g
    u = (1 - momentum) * g + momentum * state["buf"]
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-10) * (u.norm() / math.sqrt(m))  # rows to the mean row norm
    X = u / (u.norm() * 1.01 + 1e-6)
    if m > n:
        X = X.T
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    if m > n:
        X = X.T
    X = X * math.sqrt(min(m, n)) / (X.norm() + 1e-7)
    state["v"] = beta2 * state["v"] + (1 - beta2) * (X**2).mean(dim=1 if m >= n else 0, keepdim=True)
    Y = X / state["v"].clamp_min(1e-10).sqrt()
    Y = Y * X.norm() / Y.norm()
    lr_eff = lr * math.sqrt(max(1.0, m / n))
    decay = weight_decay * p * ((Y * p) >= 0)
    p -= lr_eff * (Y + decay)


# -----------------------------------------------------------------------------
# single process


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 64), (128, 16), (6, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_singular_values_near_one(shape, dtype):
    """Five Polar Express steps map every singular value of a random rectangular matrix into [0.75, 1.25]."""
    # (square Gaussian matrices are excluded: their smallest singular value can sit below 1e-3 of the norm, which
    # five steps cannot lift to 1; gradients have no such structure and Muon only needs the bulk near 1)
    torch.manual_seed(0)
    S = torch.linalg.svdvals(polar_express(torch.randn(3, *shape), dtype=dtype))
    assert S.min() > 0.75 and S.max() < 1.25, (S.min().item(), S.max().item())


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_first_muon_update_near_orthogonal(shape):
    """The first Muon update (after NorMuon scaling) has norm sqrt(min(m, n)) and singular values within 1.6x."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(*shape))
    opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": 0.1, "momentum": 0.95, "weight_decay": 0.0}])
    p.grad = torch.randn(*shape)
    before = p.detach().clone()
    opt.step()
    lr_eff = 0.1 * math.sqrt(max(1.0, shape[0] / shape[1]))
    update = (before - p.detach()) / lr_eff
    S = torch.linalg.svdvals(update)
    assert update.norm().item() == pytest.approx(math.sqrt(min(shape)), rel=1e-4)
    assert (S.max() / S.min()).item() < 1.6


def test_stacked_muon_matches_per_matrix_loop():
    """The stacked Muon step equals the plain per-matrix reference over several steps with a changing schedule."""
    torch.manual_seed(0)
    shapes = [(16, 32)] * 3 + [(48, 16)] * 2 + [(2, 12)]
    params = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    ref_params = [p.detach().clone() for p in params]
    groups = [
        {"kind": "muon", "params": params[:3], "lr": 0.02, "momentum": 0.9, "weight_decay": 0.5},
        {"kind": "muon", "params": params[3:5], "lr": 0.02, "momentum": 0.9, "weight_decay": 0.5},
        {"kind": "muon", "params": params[5:], "lr": 0.02, "momentum": 0.9, "weight_decay": 0.5},
    ]
    opt = MuonAdamW(groups)
    ref_states = [{} for _ in params]
    for step in range(5):
        lr, momentum = 0.02 * (1 - 0.1 * step), 0.9 + 0.01 * step
        for group in opt.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        grads = [torch.randn(*s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g, st in zip(ref_params, grads, ref_states):
            reference_muon_step(p, g, st, lr, momentum, 0.5, 0.9)
    for p, ref in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), ref, atol=1e-5, rtol=0)


def test_adamw_matches_torch_adamw():
    """An AdamW group equals torch.optim.AdamW with the same LR, betas, eps and decoupled weight decay."""
    torch.manual_seed(0)
    shapes = [(50, 16), (7,)]
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    torch_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    hp = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    opt = MuonAdamW([{"kind": "adamw", "params": params, **hp}])
    ref = torch.optim.AdamW(torch_params, **hp)
    for step in range(6):
        lr = 0.01 * (1 + step) / 6
        opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = lr
        for p, q in zip(params, torch_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, torch_params):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=0)


def test_adamw_bf16_params_keep_fp32_state():
    """bf16 parameters (the embeddings on GPU) get fp32 moments, also after a state_dict round trip."""
    p = torch.nn.Parameter(torch.randn(8, 4).to(torch.bfloat16))
    opt = MuonAdamW(
        [{"kind": "adamw", "params": [p], "lr": 0.01, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0}]
    )
    p.grad = torch.randn(8, 4).to(torch.bfloat16)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    opt2 = MuonAdamW(
        [{"kind": "adamw", "params": [p], "lr": 0.01, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0}]
    )
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.state[p]["exp_avg_sq"].dtype == torch.float32


def make_problem(seed=0):
    """Parameters covering every path: small and large AdamW, Muon stacks that do and do not divide by 2."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"small": (5,), "small2d": (10, 8), "large": (64, 32), "wide": (16, 32), "tall": (48, 16)}
    params = {k: torch.nn.Parameter(torch.randn(*s, generator=g) * 0.1) for k, s in shapes.items()}
    params["wide2"] = torch.nn.Parameter(torch.randn(16, 32, generator=g) * 0.1)
    params["wide3"] = torch.nn.Parameter(torch.randn(16, 32, generator=g) * 0.1)
    params["tall2"] = torch.nn.Parameter(torch.randn(48, 16, generator=g) * 0.1)
    adamw = {"kind": "adamw", "lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.01}
    groups = [
        {**adamw, "params": [params["small"], params["small2d"]]},
        {**adamw, "params": [params["large"]], "betas": (0.9, 0.99)},
        {"kind": "muon", "params": [params[k] for k in ("wide", "wide2", "wide3")], "lr": 0.02, "momentum": 0.95,
         "weight_decay": 0.2},
        {"kind": "muon", "params": [params["tall"], params["tall2"]], "lr": 0.02, "momentum": 0.95, "weight_decay": 0.2},
    ]  # fmt: skip
    order = ["small", "small2d", "large", "wide", "wide2", "wide3", "tall", "tall2"]
    return [params[k] for k in order], MuonAdamW(groups)


def rank_grads(step, params, world):
    """Deterministic per-rank gradients for a step: a (world, *shape) tensor per parameter."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(world, *p.shape, generator=g) for p in params]


def run_steps(params, opt, steps, world, rank=None):
    """rank None: one process fed the rank-averaged gradients; else this rank's own gradients."""
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * (1 - 0.1 * step)
        for p, g in zip(params, rank_grads(step, params, world)):
            p.grad = g.mean(dim=0) if rank is None else g[rank].clone()
        opt.step()


def test_state_dict_round_trip_continues_identically():
    """Saving after k steps and loading into a fresh optimizer continues bit-for-bit like the uninterrupted run."""
    params, opt = make_problem()
    run_steps(params, opt, 3, world=1)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    for step in range(3, 6):
        for p, g in zip(params, rank_grads(step, params, 1)):
            p.grad = g[0].clone()
        opt.step()
    params2, opt2 = make_problem()
    with torch.no_grad():
        for p, s in zip(params2, saved_params):
            p.copy_(s)
    opt2.load_state_dict(saved_state)
    for step in range(3, 6):
        for p, g in zip(params2, rank_grads(step, params2, 1)):
            p.grad = g[0].clone()
        opt2.step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


# -----------------------------------------------------------------------------
# two processes (gloo on CPU)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank, world, port, out_path, steps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        params, opt = make_problem()
        run_steps(params, opt, steps, world, rank=rank)
        muon_state = opt.state[params[3]]["momentum_buffer"]  # wide group: 3 matrices padded to 4, 2 per rank
        torch.save(
            {"params": [p.detach() for p in params], "muon_state_shape": tuple(muon_state.shape)}, out_path[rank]
        )
    finally:
        dist.destroy_process_group()


def test_two_rank_sharded_equals_single_process(tmp_path):
    """Two gloo ranks (ZeRO-2 sharded AdamW and Muon) end with the parameters of one process fed averaged grads."""
    world, steps = 2, 4
    out_path = [str(tmp_path / f"rank{r}.pt") for r in range(world)]
    mp.spawn(_sharded_worker, args=(world, _free_port(), out_path, steps), nprocs=world, join=True)
    params, opt = make_problem()
    run_steps(params, opt, steps, world)
    for r in range(world):
        result = torch.load(out_path[r])
        assert result["muon_state_shape"] == (2, 16, 32)
        for p, q in zip(params, result["params"]):
            torch.testing.assert_close(q, p.detach(), atol=1e-6, rtol=0)
