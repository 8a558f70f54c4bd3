"""Shared measurements of the claims: pathwise endpoint errors against a reference ODE solution, fitted orders,
exact output laws on a Gaussian target, and the digits data set for the optimal denoiser."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from diffspace.design import grids
from diffspace.samplers.converge import fit_slope, gaussian_distances, propagate_gaussian
from diffspace.samplers.problems import Problem
from diffspace.samplers.reference import solve


def latents(problem: Problem, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *problem.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def edm_grid(n_steps: int, problem: Problem, rho: float = 7.0) -> torch.Tensor:
    """n_steps steps of the ρ grid over the problem's σ range, ending at σ_min > 0."""
    return grids.edm(n_steps + 1, problem.sigma_min, problem.sigma_max, rho, append_zero=False)


def pathwise(problem: Problem, fns: dict[str, Callable], steps: Sequence[int], *, batch: int = 16, seed: int = 0,
             grid: Callable[[int], torch.Tensor] | None = None) -> dict[str, list[float]]:
    """RMS-per-dimension endpoint error ‖x_N − x_ref‖/√d (mean over the batch) of each sampler at each step
    count, against an adaptive Dormand–Prince solution (rtol 1e-11) from the same x_0."""
    grid = grid or (lambda n: edm_grid(n, problem))
    x0 = latents(problem, batch, seed) * problem.sigma_max
    refs: dict[float, torch.Tensor] = {}
    out: dict[str, list[float]] = {name: [] for name in fns}
    for n in steps:
        sig = grid(n)
        end = float(sig[-1])
        if end not in refs:
            refs[end] = solve(problem.denoiser, x0 * float(sig[0]) / problem.sigma_max, float(sig[0]), end,
                              rtol=1e-11, atol=1e-11)
        for name, fn in fns.items():
            x = fn(problem.denoiser, x0 * float(sig[0]) / problem.sigma_max, sig)
            out[name].append(float((x - refs[end]).flatten(1).norm(dim=1).mean()) / math.sqrt(problem.dim))
    return out


def slopes(steps: Sequence[int], errors: dict[str, list[float]]) -> dict[str, float]:
    return {name: fit_slope(list(steps), errs) for name, errs in errors.items()}


def gaussian_error(problem: Problem, fn: Callable, sigmas: torch.Tensor, options: dict | None = None,
                   denoiser=None) -> float:
    """Exact Hellinger distance between a sampler's output law and p(x; σ_N), started from p(x; σ_0), on a
    Gaussian target (every sampler is affine there); `denoiser` replaces the exact one (e.g. a perturbed D)."""
    from dataclasses import replace

    run_on = problem if denoiser is None else replace(problem, denoiser=denoiser)
    m0, c0 = problem.gaussian_moments(float(sigmas[0]))
    m, c = propagate_gaussian(fn, run_on, sigmas, options or {}, m0, c0)
    return gaussian_distances(m, c, *problem.gaussian_moments(float(sigmas[-1])))["hellinger"]


def digits(n: int | None = None) -> torch.Tensor:
    """scikit-learn's 8×8 digits scaled to [−1, 1], [K, 64] float64 (the first n)."""
    from diffspace.data.builtin import load_digits

    images, _ = load_digits()
    x = torch.as_tensor(images, dtype=torch.float64).reshape(len(images), -1)
    x = x / x.max() * 2 - 1
    return x if n is None else x[:n]


def loglog(fig, xs, series: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str = "") -> None:
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.loglog(list(xs)[: len(ys)], ys, "o-", label=name, ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
