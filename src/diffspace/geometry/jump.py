"""ODE-Jump (Chen et al. 2023): stop a sampler early and output its current denoised estimate.

The denoising trajectory reaches the final sample's neighbourhood several steps before the sampling trajectory
does, so a run of N steps can stop at step k and return D(x_{k-1}; σ_{k-1}), the denoiser output the sampler
computed at the start of its k-th step, and skip the rest. Steps are counted from 1: `k` is the step whose
denoised estimate is returned (k − 1 full steps are taken before it). For Euler (1 NFE per step) the jump at k
costs k NFE and saves N − k; k = N on a grid ending at σ = 0 is the full run itself (the last Euler step lands
exactly on D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffspace.errors import ConfigError
from diffspace.geometry.trajectory import CountingModel, Trajectory

__all__ = ["JumpResult", "check_jump", "jump_outputs", "ode_jump", "run_with_jump"]


@dataclass
class JumpResult:
    """The jump output x [batch, …], the NFE it cost, the NFE of the full run and the NFE saved."""

    x: torch.Tensor
    nfe: int
    nfe_full: int
    nfe_saved: int


class _Stop(Exception):
    pass


def check_jump(k: int, sigmas) -> int:
    """k must be an integer step 1..N of a grid of N + 1 noise levels."""
    n = len(torch.as_tensor(sigmas)) - 1
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"jump at step {k} is outside the run: choose 1..{n} (the grid has {n} steps)")
    return k


def run_with_jump(fn: Callable, model, x: torch.Tensor, sigmas, k: int, *, callback=None, stats: dict | None = None,
                  **options) -> torch.Tensor:
    """Call sampler `fn` (k-diffusion signature) and stop at step k with that step's denoised estimate.

    The sampler runs unchanged on the full grid, so its first k − 1 steps are exactly those of the full run; the
    denoiser calls made up to the stop are added to stats['nfe']. Returns the estimate in the dtype of `x`.
    """
    check_jump(k, sigmas)
    counted = CountingModel(model)
    caught: dict = {}

    def stop(payload: dict) -> None:
        if callback is not None:
            callback(payload)
        if int(payload["i"]) == k - 1:
            caught["x"] = payload["denoised"].detach().clone()
            raise _Stop

    try:
        fn(counted, x, sigmas, callback=stop, **options)
    except _Stop:
        pass
    if "x" not in caught:
        raise ConfigError(f"the sampler finished without reaching step {k}: it reported fewer steps than its grid")
    if stats is not None:
        stats["nfe"] = stats.get("nfe", 0) + counted.calls
    return caught["x"].to(x.dtype)


def ode_jump(sampler: str | Callable, model, x: torch.Tensor, sigmas, k: int, **options) -> JumpResult:
    """Run `sampler` (registered name or function) to step k and return its denoised estimate there, with the NFE
    it cost, the NFE of the full run (from the registry; counted for a plain function) and the NFE saved."""
    from diffspace import samplers

    fn = samplers.get(sampler) if isinstance(sampler, str) else sampler
    stats: dict = {}
    out = run_with_jump(fn, model, x, sigmas, k, stats=stats, **options)
    if hasattr(fn, "nfe"):
        full = fn.nfe(torch.as_tensor(sigmas), **{o: v for o, v in options.items() if o in fn.options})
    else:
        full_stats: dict = {}
        fn(model, x, sigmas, stats=full_stats, **options)
        full = int(full_stats.get("nfe", 0))
    return JumpResult(out, int(stats["nfe"]), int(full), int(full) - int(stats["nfe"]))


def jump_outputs(traj: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
    """The ODE-Jump output at every k = 1..N of a recorded run, and its NFE: (traj.denoised [N, B, …], nfe [N]).

    Valid for any sampler whose first k − 1 steps do not depend on later noise levels (all registered ones)."""
    if traj.nfe_at is None:
        raise ConfigError("this trajectory has no per-step NFE record: record it with geometry.record")
    return traj.denoised, traj.nfe_at
