"""diff-sampler's variable-step iPNDM (`ipndm_v`), and `lms`: the name under which k-diffusion ships the method
that diffspace calls `ipndm`.

Both are Adams–Bashforth methods in σ on d = (x − D)/σ, 1 NFE/step, orders ramping up 1, 2, …, max_order:

- `lms` (= `ipndm`, k-diffusion's `sample_lms`): the weights integrate the Lagrange polynomial through the last
  k derivatives exactly over the actual grid, so the step is exact for every d(σ) of degree < k.
- `ipndm_v` (diff-sampler): closed-form coefficients in the step sizes h = σ' − σ, h₁ = σ − σ₋₁, h₂, h₃. The
  second-order one is the exact variable-step Adams–Bashforth weight; in the third- and fourth-order ones
  the written expression for the correction factor,
      t₁ = (1 − h²/(3h₁(h₁ + h₂)))/2,
  differs from the exact Lagrange factor h(2h + 3h₁)/(6h₁(h₁ + h₂)) unless the steps are equal (then both are
  5/12 and the classical coefficients 23/12, −16/12, 5/12 come out). On a smooth grid (step ratios 1 + O(1/N))
  the difference is O(1/N) and does not change the order; on the few, very uneven steps of a low-NFE ρ=7 grid
  it changes the result. The fourth-order factor t₂ of the third difference is 11/24 on equal steps where
  Adams–Bashforth-4 has 3/8, so max_order=4 is not AB4 even on a uniform grid: it integrates constants and
  linear d exactly, not quadratics.
"""

from __future__ import annotations

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, euler_step, to_d
from diffspace.samplers.multistep import afs_denoised


def ipndm_v_coefficients(order: int, h: float, h1: float = 0.0, h2: float = 0.0, h3: float = 0.0) -> list[float]:
    """diff-sampler's variable-step iPNDM weights (c_0 for d_i, c_1 for d_{i−1}, …): x' = x + h·Σ c_j d_{i−j},
    with h = σ' − σ and h_k = σ_{i−k+1} − σ_{i−k} the previous steps (all negative on a decreasing grid)."""
    if order == 1:
        return [1.0]
    a = h / h1
    c = [(2 + a) / 2, -a / 2]
    if order == 2:
        return c
    t1 = (1 - h * h / (3 * h1 * (h1 + h2))) / 2
    c = [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if order == 3:
        return c
    s = h + h1
    t2 = (((1 - h / (3 * s)) / 2 + (1 - h / (2 * s)) * h / (6 * (s + h2)))
          * (h * s * (s + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [c[0] + t2,
            c[1] - (1 + h1 / h2 + q) * t2,
            c[2] + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2]


@torch.no_grad()
def ipndm_v(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
            max_order: int = 4, afs: bool = False):
    """Variable-step iPNDM as diff-sampler runs it (`ipndm_v`): x' = x + (σ' − σ)Σ_j c_j d_{i−j}, 1 NFE/step,
    with the closed-form step-size coefficients of `ipndm_v_coefficients` (order k = min(max_order, i + 1)).

    Equal to `lms`/`ipndm` up to order 2, and at order 3 on uniform grids; different otherwise (module
    docstring). The first step is Euler, so one step to σ' = 0 returns D.
    """
    if max_order not in (1, 2, 3, 4):
        raise ConfigError(f"max_order={max_order!r} must be 1, 2, 3 or 4")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    grid = [float(s) for s in sigmas]
    history: list[torch.Tensor] = []  # d_i, d_{i−1}, …
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = afs_denoised(x, sigma) if afs and i == 0 else run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        history = [to_d(x, sigma, denoised), *history][:max_order]
        order = len(history)
        if order == 1:
            x = euler_step(x, sigma, sigma_next, denoised)  # First step: Euler (lands on D when σ' = 0).
            continue
        steps = [grid[i + 1 - k] - grid[i - k] for k in range(order)]  # h, h1, h2, h3
        coeffs = ipndm_v_coefficients(order, *steps)
        x = x + (sigma_next - sigma) * sum(c * d for c, d in zip(coeffs, history))
    return run.done(x)


def _register() -> None:
    from diffspace.samplers.multistep import _nfe_steps, ipndm
    from diffspace.samplers.registry import register

    register("ipndm_v", ipndm_v, _nfe_steps, order=4,
             summary="Variable-step iPNDM with diff-sampler's closed-form coefficients (its ipndm_v), 1 NFE/step, "
                     "order max_order (default 4).")
    register("lms", ipndm, _nfe_steps, order=4,
             summary="Linear multistep in sigma with exact variable-step Adams-Bashforth weights, 1 NFE/step: "
                     "k-diffusion's sample_lms, the same function as ipndm (order max_order, default 4).")


_register()
