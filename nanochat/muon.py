"""
MuonAdamW: the model's one optimizer, the same class for 1 process and for N ranks.

AdamW groups (kind="adamw": embeddings, lm_head, per-layer scalars):
- decoupled weight decay, bias-corrected moments, math and state in fp32 whatever the parameter dtype
  (the embedding tables are stored in bf16 on GPU).
Muon groups (kind="muon": every matrix inside the blocks, one group per shape, updated as one (K, m, n) stack):
1. Nesterov momentum: buf <- lerp(buf, g, 1 - mu); u <- lerp(g, buf, mu)  (Muon, Jordan et al. 2024).
2. MuonEq row equilibration: every row rescaled to the mean row norm, so no row dominates the polar factor (nanochat).
3. Polar Express orthogonalization, 5 steps with per-step optimal odd-polynomial coefficients (Amsel et al. 2025,
   arXiv 2505.16932); in bf16 when the compute dtype is bf16, its singular values land near 1.
4. Muon+ renormalization to Frobenius norm sqrt(min(m, n)), the norm of an exact semi-orthogonal matrix (nanochat).
5. NorMuon factored second moment: EMA (beta2) of the mean of u^2 per row (rows >= cols) or per column, u scaled by
   its rsqrt, then rescaled to its previous total norm: equalizes per-neuron step sizes (NorMuon, 2025).
6. Cautious weight decay: decay only where the update and the weight agree in sign (cautious weight decay, 2025);
   p <- p - lr_eff * (u + wd * p * [u*p >= 0]) with lr_eff = lr * sqrt(max(1, rows/cols)) (weights are (out, in)).

Distributed (torch.distributed initialized with world size W > 1), ZeRO-2 style, no DDP wrapper anywhere:
- AdamW params with < 1024 elements: all_reduce(AVG) of the gradient, every rank does the full (tiny) update.
- larger AdamW params: reduce_scatter(AVG) along dim 0 (rows must divide by W), each rank updates and keeps state
  for its slice of rows, then all_gather of the updated slices.
- Muon groups: the K same-shape gradients are stacked and zero-padded to a multiple of W, reduce_scatter gives each
  rank whole matrices, each rank updates the ones it owns (state for those only), all_gather of the updated stack.
- every reduction is launched first (async), then each is waited for in order and its update computed while the rest
  are in flight; the gathers are waited for at the end. On one process no communication happens at all.
The optimizer state is per rank: save and load one state_dict per rank, at the same world size.

On CUDA both update kernels are torch.compile'd (fused elementwise work); hyperparameters then travel as 0-D CPU
tensors so that changing LR or momentum every step does not recompile. On CPU they run eagerly.
"""

import torch
import torch.distributed as dist

from nanochat.common import get_compute_dtype

# Polar Express coefficients (a, b, c) for 5 steps: each step maps X -> a X + b (X X^T) X + c (X X^T)^2 X.
# Computed for 5 iterations with safety factor 2e-2 and cushion 2 (arXiv 2505.16932), as used by nanochat.
POLAR_EXPRESS_COEFFS = [
    (8.1566, -22.4833, 15.8788),
    (4.0429, -2.8089, 0.5000),
    (3.8917, -2.7725, 0.5061),
    (3.2858, -2.3681, 0.4645),
    (2.3465, -1.7098, 0.4232),
]
SHARD_MIN_NUMEL = 1024  # AdamW params smaller than this are all-reduced and updated whole on every rank


# -----------------------------------------------------------------------------
# Update math (pure functions of tensors; hyperparameters are Python floats or 0-D tensors)


def polar_express(G, steps=5, dtype=torch.float32):
    """Approximate polar factor U V^T of each matrix in G (..., m, n). Iterates in `dtype`, returns fp32."""
    X = G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)  # all singular values now < 1
    X = X.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # work on the wide orientation so that A = X X^T is the small Gram matrix
        X = X.mT
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.float()


def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on p (any float dtype), fp32 math; exp_avg/exp_avg_sq fp32, updated in place."""
    g = grad.float()
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.lerp_(g * g, 1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = exp_avg_sq.sqrt() / bias_correction2**0.5 + eps
    new_p = p.float() * (1 - lr * weight_decay) - (exp_avg / denom) * (lr / bias_correction1)
    p.copy_(new_p)


def muon_update(grads, params, momentum_buffer, second_momentum_buffer, momentum, lr, weight_decay, beta2, dtype):
    """
    One Muon step on a stack. grads (K, m, n) is scratch (overwritten); params (K, m, n) fp32 updated in place;
    momentum_buffer (K, m, n) and second_momentum_buffer (K, m, 1) or (K, 1, n) fp32; dtype: polar express dtype.
    """
    m, n = params.shape[-2:]
    g = grads.float()
    momentum_buffer.lerp_(g, 1 - momentum)
    u = g.lerp_(momentum_buffer, momentum)  # Nesterov
    # MuonEq: rows to the mean row norm ||u||_F / sqrt(m)
    row_norm = u.norm(dim=-1, keepdim=True)
    u = u * (u.norm(dim=(-2, -1), keepdim=True) / m**0.5 / row_norm.clamp_min(1e-10))
    u = polar_express(u, dtype=dtype)
    u = u * (min(m, n) ** 0.5 / (u.norm(dim=(-2, -1), keepdim=True) + 1e-7))  # Muon+
    # NorMuon: factored second moment over the longer side, then restore the total norm
    reduce_dim = -1 if m >= n else -2
    second_momentum_buffer.lerp_(u.square().mean(dim=reduce_dim, keepdim=True), 1 - beta2)
    norm_before = u.norm(dim=(-2, -1), keepdim=True)
    u = u * second_momentum_buffer.clamp_min(1e-10).rsqrt()
    u = u * (norm_before / u.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # cautious weight decay and the step, with the shape-aware LR
    lr_eff = lr * max(1.0, m / n) ** 0.5
    mask = (u * params) >= 0
    params.sub_(lr_eff * (u + weight_decay * params * mask))


_compiled_kernels = {}


def _get_kernel(fn, device):
    """The compiled kernel on CUDA (compiled once per process), the eager function elsewhere."""
    if device.type != "cuda":
        return fn
    if fn not in _compiled_kernels:
        _compiled_kernels[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _compiled_kernels[fn]


def _reduce_scatter(output, input, op, async_op):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed in newer torch
    return fn(output, input, op=op, async_op=async_op)


def _all_gather(output, input, async_op):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, async_op=async_op)


def _hyperparameter_caster(device):
    """Compiled kernels get 0-D CPU tensors (a changed value must not recompile); eager ones get Python floats."""
    if device.type == "cuda":
        return lambda x: torch.tensor(float(x), dtype=torch.float32)
    return float


# -----------------------------------------------------------------------------
# The optimizer


class MuonAdamW(torch.optim.Optimizer):
    """
    param_groups: dicts with kind="adamw" (params, lr, betas, eps, weight_decay) or kind="muon" (params of one 2-D
    shape, lr, momentum, weight_decay, beta2=0.9). Every group gets initial_lr (= lr) for the LR schedule.
    """

    def __init__(self, param_groups):
        groups = []
        for group in param_groups:
            group = dict(group)
            group["params"] = list(group["params"])
            kind = group.get("kind")
            assert kind in ("adamw", "muon"), f"param group kind must be 'adamw' or 'muon', got {kind!r}"
            required = ("lr", "betas", "eps", "weight_decay") if kind == "adamw" else ("lr", "momentum", "weight_decay")
            missing = [k for k in required if k not in group]
            assert not missing, f"{kind} group is missing {missing}"
            if kind == "muon":
                group.setdefault("beta2", 0.9)
                shapes = {tuple(p.shape) for p in group["params"]}
                assert len(shapes) == 1 and len(next(iter(shapes))) == 2, f"a muon group needs one 2-D shape: {shapes}"
            group.setdefault("initial_lr", group["lr"])
            groups.append(group)
        super().__init__(groups, defaults={})

    @staticmethod
    def _world():
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @torch.no_grad()
    def step(self):
        rank, world = self._world()
        # Phase 1: launch every gradient reduction (async on N ranks, nothing on 1)
        jobs = []
        for group in self.param_groups:
            if group["kind"] == "adamw":
                jobs += [self._launch_adamw(group, p, rank, world) for p in group["params"] if p.grad is not None]
            else:
                jobs.append(self._launch_muon(group, rank, world))
        # Phase 2: in launch order, wait for the reduction, update what this rank owns, launch the gather
        gathers = []
        for job in jobs:
            if job["work"] is not None:
                job["work"].wait()
            update = self._update_adamw if job["group"]["kind"] == "adamw" else self._update_muon
            gather = update(job, rank, world)
            if gather is not None:
                gathers.append(gather)
        # Phase 3: wait for the gathers and put the gathered Muon stacks back into the parameters
        for work, params, stacked in gathers:
            work.wait()
            if params is not None:
                for i, p in enumerate(params):
                    p.copy_(stacked[i])

    # -- AdamW ------------------------------------------------------------------

    def _launch_adamw(self, group, p, rank, world):
        job = {"group": group, "p": p, "grad": p.grad, "target": p, "work": None, "sharded": False}
        if world == 1:
            return job
        if p.numel() < SHARD_MIN_NUMEL:
            job["work"] = dist.all_reduce(p.grad, op=dist.ReduceOp.AVG, async_op=True)
            return job
        assert p.shape[0] % world == 0, (
            f"AdamW shards parameters by rows: shape {tuple(p.shape)} has {p.shape[0]} rows, "
            f"not divisible by the world size {world}"
        )
        rows = p.shape[0] // world
        grad = p.grad.contiguous()
        job["grad"] = torch.empty_like(grad[:rows])
        job["work"] = _reduce_scatter(job["grad"], grad, op=dist.ReduceOp.AVG, async_op=True)
        job["target"] = p[rank * rows : (rank + 1) * rows]
        job["sharded"] = True
        return job

    def _update_adamw(self, job, rank, world):
        group, p, target = job["group"], job["p"], job["target"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(target, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(target, dtype=torch.float32)
        assert state["exp_avg"].shape == target.shape, (
            f"AdamW state {tuple(state['exp_avg'].shape)} does not match this rank's slice {tuple(target.shape)}: "
            "was it saved with a different world size?"
        )
        state["step"] += 1
        hp = _hyperparameter_caster(p.device)
        beta1, beta2 = group["betas"]
        _get_kernel(adamw_update, p.device)(
            target,
            job["grad"],
            state["exp_avg"],
            state["exp_avg_sq"],
            hp(state["step"]),
            hp(group["lr"]),
            hp(beta1),
            hp(beta2),
            hp(group["eps"]),
            hp(group["weight_decay"]),
        )
        if job["sharded"]:
            return _all_gather(p, target.clone(), async_op=True), None, None
        return None

    # -- Muon -------------------------------------------------------------------

    def _launch_muon(self, group, rank, world):
        params = group["params"]
        missing = [i for i, p in enumerate(params) if p.grad is None]
        assert not missing, f"muon group of shape {tuple(params[0].shape)}: params {missing} have no gradient"
        if world == 1:
            return {"group": group, "grads": torch.stack([p.grad for p in params]), "work": None}
        K, (m, n) = len(params), params[0].shape
        k_local = -(-K // world)  # whole matrices per rank; the stack is zero-padded to k_local * world
        stacked = params[0].grad.new_zeros(k_local * world, m, n)
        for i, p in enumerate(params):
            stacked[i].copy_(p.grad)
        owned = stacked.new_empty(k_local, m, n)
        work = _reduce_scatter(owned, stacked, op=dist.ReduceOp.AVG, async_op=True)
        return {"group": group, "grads": owned, "stacked": stacked, "work": work}

    def _update_muon(self, job, rank, world):
        group, grads = job["group"], job["grads"]
        params = group["params"]
        K, k_local, (m, n) = len(params), grads.size(0), params[0].shape
        if world == 1:
            owned = torch.stack(params)
        else:
            owned = grads.new_zeros(k_local, m, n)
            for j in range(k_local):
                if rank * k_local + j < K:
                    owned[j].copy_(params[rank * k_local + j])
        state = self.state[params[0]]  # the whole group's (this rank's) state lives on its first param
        if not state:
            state["momentum_buffer"] = torch.zeros(k_local, m, n, dtype=torch.float32, device=grads.device)
            factored = (k_local, m, 1) if m >= n else (k_local, 1, n)
            state["second_momentum_buffer"] = torch.zeros(factored, dtype=torch.float32, device=grads.device)
        assert state["momentum_buffer"].shape == owned.shape, (
            f"Muon state {tuple(state['momentum_buffer'].shape)} does not match the owned stack {tuple(owned.shape)}: "
            "was it saved with a different world size?"
        )
        device = grads.device
        hp = _hyperparameter_caster(device)
        ortho_dtype = torch.bfloat16 if get_compute_dtype(device.type) == torch.bfloat16 else torch.float32
        _get_kernel(muon_update, device)(
            grads,
            owned,
            state["momentum_buffer"],
            state["second_momentum_buffer"],
            hp(group["momentum"]),
            hp(group["lr"]),
            hp(group["weight_decay"]),
            hp(group["beta2"]),
            ortho_dtype,
        )
        if world == 1:
            for i, p in enumerate(params):
                p.copy_(owned[i])
            return None
        stacked = job["stacked"]
        return _all_gather(stacked, owned, async_op=True), params, stacked

    # -- state ------------------------------------------------------------------

    def load_state_dict(self, state_dict):
        """
        Like torch's, but keeps the saved state dtypes (torch would cast the fp32 moments of bf16 embeddings to
        bf16) so that a resumed run continues exactly.
        """
        saved_groups = state_dict["param_groups"]
        assert len(saved_groups) == len(self.param_groups), (
            f"saved optimizer has {len(saved_groups)} param groups, this one {len(self.param_groups)}"
        )
        index_to_param = {}
        for group, saved in zip(self.param_groups, saved_groups):
            assert len(group["params"]) == len(saved["params"]), (
                f"param group sizes differ: {len(group['params'])} vs saved {len(saved['params'])}"
            )
            index_to_param.update(zip(saved["params"], group["params"]))
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state.clear()
        for index, saved_state in state_dict["state"].items():
            p = index_to_param[index]
            self.state[p] = {k: v.to(p.device, copy=True) if torch.is_tensor(v) else v for k, v in saved_state.items()}


# -----------------------------------------------------------------------------
# Schedules


def set_group_hparams(optimizer, lrm, momentum=None, weight_decay=None):
    """
    One step of a schedule: every group's lr = its initial_lr * lrm; Muon groups also take `momentum` and
    `weight_decay` when given (None: left as they are).
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            if momentum is not None:
                group["momentum"] = momentum
            if weight_decay is not None:
                group["weight_decay"] = weight_decay


# -----------------------------------------------------------------------------
# Description (checkpoint metadata, model cards)


def describe_param_groups(optimizer, scheduled=None):
    """
    One JSON-able dict per param group: name, kind, peak LR (initial_lr), betas + eps (AdamW) or momentum + beta2
    (Muon), weight decay, tensor and element counts. Values are the group's at the time of the call; `scheduled`
    maps a group kind to the settings the training loop changes every step (e.g. {"adamw": ("lr",), "muon": ("lr",
    "momentum")}), listed on each group of that kind.
    """

    def plain(v):
        return v.item() if torch.is_tensor(v) else list(v) if isinstance(v, tuple) else v

    described = []
    for i, group in enumerate(optimizer.param_groups):
        d = {"name": group.get("name", f"group {i}"), "kind": group["kind"], "initial_lr": plain(group["initial_lr"])}
        keys = ("betas", "eps") if group["kind"] == "adamw" else ("momentum", "beta2")
        d.update({k: plain(group[k]) for k in (*keys, "weight_decay")})
        d["num_tensors"] = len(group["params"])
        d["num_params"] = sum(p.numel() for p in group["params"])
        if (scheduled or {}).get(group["kind"]):
            d["scheduled"] = list(scheduled[group["kind"]])
        described.append(d)
    return described
