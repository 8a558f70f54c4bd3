"""GITS (Chen, Zhou, Wang, Shen, Lyu, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024):
a time grid for any sampler, chosen by dynamic programming on a cost matrix built from teacher trajectories.

1. Teacher: `warmup` trajectories of a fine sampler (iPNDM) on a `teacher_steps`-level ρ=7 grid t_0 > … > t_{N−1}.
2. Cost of jumping from teacher level i to level j > i with one Euler step along the teacher's own direction
   d_i = (x_i − D(x_i; t_i))/t_i, i.e. x̂ = x_i + (t_j − t_i)·d_i, averaged over the batch:
   'dev'  dev(x̂) − dev(x_j), dev = distance to the straight line through the teacher's start and end points
          (the teacher's last point has deviation 0), or 'l1' / 'l2': ‖x̂ − x_j‖.
3. Dynamic programme: V[i][1] = C[i][N−1], V[j][k] = min_{j<i<N−1} C[j][i] + coeff·V[i][k−1]; the path from 0
   with K segments gives the student's levels (later segments weighted by powers of `coeff`).
4. Analytical first step (optional): one more level is inserted between the first two, the one that gives the
   smallest final error against the teacher with the sampler's `afs=True` (same NFE for 1-NFE samplers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffspace.errors import ConfigError

COSTS = ("dev", "l1", "l2")


def steps_for_nfe(sampler: str, nfe: int, *, to_zero: bool = False, **options) -> int:
    """The most steps `sampler` can take within `nfe` denoiser calls (2-evaluation samplers get about half)."""
    from diffspace import samplers

    entry = samplers.get(sampler)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ConfigError(f"nfe={nfe!r} must be a positive integer")
    best = None
    for steps in range(1, nfe + 2):
        grid = torch.linspace(80.0, 1.0, steps + 1, dtype=torch.float64)
        if to_zero:
            grid[-1] = 0.0
        if entry.nfe(grid, **{k: v for k, v in options.items() if k in entry.options}) <= nfe:
            best = steps
    if best is None:
        one = torch.tensor([80.0, 0.0 if to_zero else 1.0], dtype=torch.float64)
        low = entry.nfe(one, **{k: v for k, v in options.items() if k in entry.options})
        raise ConfigError(f"nfe={nfe} is below the minimum NFE of sampler {sampler!r} ({low} for one step): "
                          "raise the budget or choose a 1-NFE sampler (euler, ipndm, dpmpp_2m)")
    return best


def deviation(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per-sample distance of `points` [B, ...] to the line through `start` and `end` [B, ...]; shape [B]."""
    a, b, c = points.flatten(1), start.flatten(1), end.flatten(1)
    u = c - b
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-300)
    ac = c - a
    return (ac - (ac * u).sum(1, keepdim=True) * u).norm(dim=1)


def cost_matrix(x: torch.Tensor, d: torch.Tensor, sigmas: torch.Tensor, cost: str = "dev") -> torch.Tensor:
    """Batch-mean cost C[i, j] (i < j) of one Euler jump from teacher level i to level j (module docstring).

    x: [N, B, ...] teacher points at the N levels `sigmas`; d: [N−1, B, ...] the teacher's derivative at each level.
    Entries with j <= i are +inf.
    """
    if cost not in COSTS:
        raise ConfigError(f"unknown GITS cost {cost!r}: choose one of {', '.join(COSTS)}")
    n = x.shape[0]
    C = torch.full((n, n), math.inf, dtype=torch.float64)
    start, end = x[0], x[-1]
    if cost == "dev":
        dev_tea = torch.stack([deviation(x[j], start, end).mean() for j in range(n)])
        dev_tea[-1] = 0.0
    for i in range(n - 1):
        steps = (sigmas[i + 1:] - sigmas[i]).to(x).reshape(-1, *[1] * (x.ndim - 1))
        x_hat = x[i][None] + steps * d[i][None]  # [n − i − 1, B, ...]: one Euler jump to every later level
        if cost == "dev":
            dev = torch.stack([deviation(row, start, end).mean() for row in x_hat])
            C[i, i + 1:] = dev - dev_tea[i + 1:]
        else:
            diff = (x_hat - x[i + 1:]).flatten(2)
            C[i, i + 1:] = diff.norm(p=1 if cost == "l1" else 2, dim=2).mean(1)
    return C


def solve_dp(cost: torch.Tensor, steps: int, coeff: float = 1.15) -> list[int]:
    """Indices 0 = i_0 < i_1 < … < i_steps = N−1 minimising Σ_k coeff^k·C[i_k, i_{k+1}] (the GITS programme).

    V[i][1] = C[i][N−1]; V[j][k] = min over j < i < N−1 of C[j][i] + coeff·V[i][k−1]; backtrack from level 0.
    """
    C = torch.as_tensor(cost, dtype=torch.float64)
    n = C.shape[0]
    if C.shape != (n, n):
        raise ConfigError(f"the cost matrix must be square, got {tuple(C.shape)}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    if steps > n - 1:
        raise ConfigError(f"the teacher grid has {n} levels ({n - 1} steps), shorter than the student's {steps} "
                          f"steps: use teacher_steps >= {steps + 1}")
    V = torch.full((n, steps + 1), math.inf, dtype=torch.float64)
    arg = torch.full((n, steps + 1), -1, dtype=torch.long)
    V[:, 1] = C[:, n - 1]
    V[n - 1, 1] = math.inf
    arg[:, 1] = n - 1
    for k in range(2, steps + 1):
        for j in range(n - 1):
            for i in range(j + 1, n - 1):
                v = C[j, i] + coeff * V[i, k - 1]
                if v < V[j, k]:
                    V[j, k], arg[j, k] = v, i
    if not math.isfinite(float(V[0, steps])):
        raise ConfigError(f"no finite path with {steps} steps through the cost matrix (non-finite costs)")
    path, w = [0], 0
    for k in range(steps, 0, -1):
        w = int(arg[w, k])
        path.append(w)
    return path


def _latents(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Per-seed unit latents (float32 draws, as `diffspace generate` makes them), in float64."""
    from diffspace.samplers import StackedRandom

    return StackedRandom(seeds).randn(tuple(shape), dtype=torch.float32).to(torch.float64)


def teacher_grid(teacher_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    from diffspace.design import grids

    if not isinstance(teacher_steps, int) or teacher_steps < 2:
        raise ConfigError(f"teacher_steps={teacher_steps!r} must be an integer >= 2 (GITS recommends 61)")
    return grids.edm(teacher_steps, sigma_min, sigma_max, rho, append_zero=False)


def teacher_run(model, sigmas: torch.Tensor, latents: torch.Tensor, *, teacher: str = "ipndm",
                extra_args: dict | None = None):
    """The teacher's sampling trajectory [N, B, ...] and derivatives d_i [N−1, B, ...] on `sigmas`."""
    from diffspace.geometry import record

    traj = record(teacher, model, latents * sigmas[0], sigmas, extra_args=extra_args, disable=True)
    x = traj.x
    d = (x[:-1] - traj.denoised) / sigmas[:-1].to(x).reshape(-1, *[1] * (x.ndim - 1))
    return x, d


def gits(model, nfe: int, *, shape: Sequence[int], sampler: str = "ipndm", teacher_steps: int = 61,
         warmup: int = 256, coeff: float = 1.15, cost: str = "dev", afs: bool = False, seed: int = 0,
         sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, teacher: str = "ipndm",
         batch: int = 64, extra_args: dict | None = None, **sampler_options) -> torch.Tensor:
    """A GITS σ grid (float64, from sigma_max to sigma_min) for `sampler` at `nfe` denoiser calls.

    `model(x, sigma)` is any denoiser; `shape` the shape of one sample; the warm-up latents are seeds
    seed … seed + warmup − 1. With `afs=True` the sampler must take an `afs` option and is meant to be run with it.
    """
    from diffspace import samplers

    entry = samplers.get(sampler)
    if afs and "afs" not in entry.options:
        raise ConfigError(f"sampler {sampler!r} has no analytical first step: drop afs or choose one of "
                          "dpm_2, dpmpp_2m, dpmpp_3m, ipndm, amed")
    if not coeff > 0:
        raise ConfigError(f"coeff={coeff} must be > 0 (GITS uses 1.15)")
    if cost not in COSTS:
        raise ConfigError(f"unknown GITS cost {cost!r}: choose one of {', '.join(COSTS)}")
    opts = dict(sampler_options, **({"afs": True} if afs else {}))
    steps = steps_for_nfe(sampler, nfe, **opts)
    dp_steps = steps - 1 if afs else steps
    if dp_steps < 1:
        raise ConfigError(f"nfe={nfe} leaves no step for the programme once AFS inserts its level: raise nfe")
    teacher_grid(teacher_steps, sigma_min, sigma_max, rho)  # validates the teacher settings
    if dp_steps > teacher_steps - 1:
        raise ConfigError(f"teacher grid of {teacher_steps} levels is shorter than the student's {dp_steps} steps: "
                          f"use teacher_steps >= {dp_steps + 1}")
    table = teacher_costs(model, shape=shape, teacher_steps=teacher_steps, warmup=warmup, cost=cost, seed=seed,
                          sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, teacher=teacher, batch=batch,
                          extra_args=extra_args)
    return table.grid(sampler, dp_steps, coeff=coeff, afs=afs, model=model, extra_args=extra_args, **sampler_options)


class CostTable:
    """A GITS cost matrix with its teacher levels and the last warm-up batch (for the AFS insertion); one table
    serves every sampler and budget of a model."""

    def __init__(self, C: torch.Tensor, sigmas: torch.Tensor, latents: torch.Tensor, x_end: torch.Tensor):
        self.C, self.sigmas, self.latents, self.x_end = C, sigmas, latents, x_end

    def grid(self, sampler: str, steps: int, *, coeff: float = 1.15, afs: bool = False, model=None,
             extra_args: dict | None = None, **options) -> torch.Tensor:
        """The σ grid of `steps` DP steps (one more with AFS) for `sampler`."""
        from diffspace import samplers

        path = solve_dp(self.C, steps, coeff)
        if afs:
            if model is None:
                raise ConfigError("the AFS insertion runs the sampler: pass model=")
            opts = dict(options, afs=True)
            path = _insert_afs(model, samplers.get(sampler), path, self.sigmas, (self.latents, self.x_end), opts,
                               extra_args)
        return self.sigmas[path].clone()


def teacher_costs(model, *, shape: Sequence[int], teacher_steps: int = 61, warmup: int = 256, cost: str = "dev",
                  seed: int = 0, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  teacher: str = "ipndm", batch: int = 64, extra_args: dict | None = None) -> CostTable:
    """Teacher trajectories of seeds seed … seed + warmup − 1 and their batch-mean GITS cost matrix."""
    if not isinstance(warmup, int) or warmup < 1:
        raise ConfigError(f"warmup={warmup!r} must be a positive integer")
    t_tea = teacher_grid(teacher_steps, sigma_min, sigma_max, rho)
    C = torch.zeros(teacher_steps, teacher_steps, dtype=torch.float64)
    seeds = list(range(seed, seed + warmup))
    lat = x_end = None
    for s in range(0, warmup, batch):
        part = seeds[s:s + batch]
        lat = _latents(shape, part)
        x, d = teacher_run(model, t_tea, lat, teacher=teacher, extra_args=extra_args)
        C += cost_matrix(x, d, t_tea, cost) * len(part)
        x_end = x[-1]
    return CostTable(C / warmup, t_tea, lat, x_end)


def _insert_afs(model, entry, path: list[int], t_tea, last, opts: dict, extra_args) -> list[int]:
    """Insert the teacher level between the first two that gives the smallest final error with AFS."""
    lat, x_end = last
    best, best_err = None, math.inf
    for k in range(1, path[1]):
        trial = [path[0], k, *path[1:]]
        sig = t_tea[trial]
        out = entry(model, lat * sig[0], sig, extra_args=extra_args, disable=True, **opts)
        err = float((out - x_end).flatten(1).norm(dim=1).mean())
        if err < best_err:
            best, best_err = trial, err
    if best is None:  # the first two levels are adjacent teacher levels: nothing to insert
        raise ConfigError("the first GITS step spans one teacher step, so no AFS level can be inserted: "
                          "use more teacher_steps or drop afs")
    return best
