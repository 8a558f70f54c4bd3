"""Multistep DPM-Solver in noise-prediction form (Lu et al. 2022; the multistep form of Lu et al. 2022b with
the model output taken as ε instead of D), as diff-sampler's `dpm_pp` sampler runs it with predict_x0=False.

In σ(t) = t, s(t) = 1 coordinates with λ = −log σ, ε = (x − D)/σ = dx/dσ and h = λ' − λ = log(σ/σ'), the
exact solution is x(σ') = x − σ'∫_0^h e^{u}ε(λ' − u) du. Expanding ε in λ around the current point gives the
exponential-integrator terms with φ₁ = e^h − 1, φ₂ = φ₁/h − 1, φ₃ = φ₂/h − ½:

    x' = x − σ'φ₁ε_i − σ'φ₂·D1 − c·σ'φ₃·D2         (σ'φ₁ = σ − σ': the first term is an Euler step in σ)

with D1 ≈ hε' and D2 ≈ h²ε''/2 the divided differences of the last three ε's in λ (second order: D1 from two,
x' = x − σ'φ₁(ε_i + D1/2)). The Taylor term of the third-order update is c = 2; DPM-Solver's published
coefficient, which diff-sampler uses, is c = 1 (`compat=True`), which makes that update second order only —
the same half-coefficient as in the data-prediction DPM-Solver++(3M) (see `dpmpp_3m`).
"""

from __future__ import annotations

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, to_d
from diffspace.samplers.multistep import afs_denoised


def step_order(i: int, steps: int, max_order: int, lower_order_final: bool) -> int:
    """Order of step i (0-based) of `steps`: warm-up 1, 2, … then max_order; with lower_order_final the last
    steps use at most as many points as steps remain (diff-sampler's rule: the warm-up takes precedence)."""
    if i + 1 < max_order:
        return i + 1
    return min(max_order, steps - i) if lower_order_final else max_order


def _dpm_eps(model, x, sigmas, *, extra_args, callback, disable, dtype, stats, max_order: int,
             lower_order_final: bool, compat: bool, afs: bool):
    if max_order not in (1, 2, 3):
        raise ConfigError(f"max_order={max_order!r} must be 1, 2 or 3")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    eps_hist: list[torch.Tensor] = []  # ε_i, ε_{i−1}, ε_{i−2}
    sig_hist: list[torch.Tensor] = []
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = afs_denoised(x, sigma) if afs and i == 0 else run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        eps_hist = [to_d(x, sigma, denoised), *eps_hist][:3]
        sig_hist = [sigma, *sig_hist][:3]
        if sigma_next == 0:
            x = denoised  # h = ∞: every higher-order term vanishes and the Euler step lands on D.
            continue
        order = step_order(i, run.steps, max_order, lower_order_final)
        h = (sigma / sigma_next).log()
        phi_1 = torch.expm1(h)
        x_first = x - sigma_next * phi_1 * eps_hist[0]
        if order == 1:
            x = x_first
        elif order == 2:
            r0 = (sig_hist[1] / sigma).log() / h
            d1_0 = (eps_hist[0] - eps_hist[1]) / r0
            x = x_first - 0.5 * sigma_next * phi_1 * d1_0
        else:
            r0, r1 = (sig_hist[1] / sigma).log() / h, (sig_hist[2] / sig_hist[1]).log() / h
            d1_0 = (eps_hist[0] - eps_hist[1]) / r0
            d1_1 = (eps_hist[1] - eps_hist[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h - 1
            phi_3 = phi_2 / h - 0.5
            x = x_first - sigma_next * phi_2 * d1 - (1 if compat else 2) * sigma_next * phi_3 * d2
    return run.done(x)


@torch.no_grad()
def dpm_2m(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
           afs: bool = False, lower_order_final: bool = True):
    """DPM-Solver-2M in noise-prediction form (diff-sampler's `dpm_pp`, predict_x0=False, max_order=2),
    1 NFE/step: x' = x + (σ' − σ)(ε_i + (ε_i − ε_{i−1})/(2r)), r = h_{i−1}/h_i in λ = −log σ, ε = (x − D)/σ.

    The first step is Euler; with lower_order_final (default, as diff-sampler) so is the last one; a step to
    σ' = 0 returns D.
    """
    return _dpm_eps(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
                    stats=stats, max_order=2, lower_order_final=lower_order_final, compat=False, afs=afs)


@torch.no_grad()
def dpm_3m(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
           afs: bool = False, lower_order_final: bool = True, compat: bool = False):
    """DPM-Solver-3M in noise-prediction form (diff-sampler's `dpm_pp`, predict_x0=False, max_order=3), 1 NFE/step:
    x' = x − σ'φ₁ε_i − σ'φ₂D1 − 2σ'φ₃D2 with φ₁ = e^h − 1, φ₂ = φ₁/h − 1, φ₃ = φ₂/h − ½ (module docstring).

    Warm-up orders 1, 2; with lower_order_final (default, as diff-sampler) the last two steps use orders 2
    and 1; a step to σ' = 0 returns D. `compat=True` uses −σ'φ₃D2, diff-sampler's (and DPM-Solver's)
    coefficient, which is second order only.
    """
    return _dpm_eps(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
                    stats=stats, max_order=3, lower_order_final=lower_order_final, compat=compat, afs=afs)


def _register() -> None:
    from diffspace.samplers.multistep import _nfe_steps
    from diffspace.samplers.registry import register

    register("dpm_2m", dpm_2m, _nfe_steps, order=2,
             summary="DPM-Solver-2M in noise-prediction form: a 1-NFE multistep exponential integrator on "
                     "ε = (x − D)/σ, second order.")
    register("dpm_3m", dpm_3m, _nfe_steps, order=3,
             summary="DPM-Solver-3M in noise-prediction form: a 1-NFE multistep exponential integrator on "
                     "ε = (x − D)/σ, third order (second with compat=True, the published coefficient).")


_register()
