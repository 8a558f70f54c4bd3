"""Li, Huang, Efimov, Wei, Chi, Chen (ICML 2024), "Accelerating Convergence of Score-Based Diffusion Models,
Provably": the vanilla and the accelerated DDIM-/DDPM-type samplers in the σ-parameterisation.

Every update acts on the unscaled state z (σ(t)=t, s(t)=1); multiply by sqrt(ᾱ) = (1 + σ²)^{−1/2} for the
VP state of the paper. With σ the current level, σ' the next and σ⁻ the previous (noisier) one:

    (A) ddim_type   Euler in u = σ²                       z' = z − (σ² − σ'²)/(2σ²)·(z − D)
    (B) ddim        exact DDIM = EDM Euler                 z' = (σ'/σ)z + (1 − σ'/σ)D
    (C) ddpm_type   vanilla DDPM-type                     z' = z − (σ² − σ'²)/σ²·(z − D) + sqrt(σ² − σ'²)·ξ
        ddpm        ancestral DDPM (posterior sampling)   z' = D + (σ'²/σ²)(z − D) + σ'·sqrt(1 − σ'²/σ²)·ξ
    (D) accel_sde   accelerated SDE, 1 NFE                see `accel_sde`
    (E) accel_ode   accelerated ODE, 1 NFE (experiments)  see `accel_ode`
    (F) accel_ode2  accelerated ODE, 2 NFE (theory form)  see `accel_ode2`

Forms A, C, D and F approximate the step to σ' = 0 badly (A returns (z + D)/2 there), so, as the theory
(which stops at σ_1 = T^{−c0/2}), they need a grid ending at σ_min > 0; `denoise_to_zero=True` then finishes
with z ← D(z; σ_min) (EDM-style, +1 NFE).
"""

from __future__ import annotations

import math

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, euler_step
from diffspace.samplers.multistep import afs_denoised, euler_ancestral


def _needs_positive_end(run: Run, name: str, form: str) -> None:
    """Forms A, C, D, F: refuse a grid whose last level is 0 (their steps to σ = 0 do not land on D)."""
    if float(run.sigmas[-1]) == 0.0:
        raise ConfigError(
            f"{name} (Li et al. form {form}) needs a grid ending at sigma_min > 0, but this grid ends at 0: its "
            "step to sigma=0 does not land on D(x; sigma). Drop the final 0 (e.g. grids.edm(n, append_zero=False) "
            "or grids.li(T)) and pass denoise_to_zero=True to finish with D(x; sigma_min)")


def _finish(run: Run, x: torch.Tensor, denoise_to_zero: bool) -> torch.Tensor:
    """Optional EDM-style last call x ← D(x; σ_min) (+1 NFE), reported as step N."""
    if denoise_to_zero:
        sigma_min = run.sigmas[-1]
        denoised = run.denoise(x, sigma_min, run.steps)
        run.report(run.steps, x, sigma_min, sigma_min, denoised)
        x = denoised
    return run.done(x)


@torch.no_grad()
def ddim_type(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
              denoise_to_zero: bool = False):
    """Form A, DDIM-type (theory): Y_{t−1} = (Y_t + ½(1−α_t)s_t(Y_t))/sqrt(α_t), i.e. Euler in σ². 1 NFE/step."""
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    _needs_positive_end(run, "ddim_type", "A")
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        x = x - (sigma**2 - sigma_next**2) / (2 * sigma**2) * (x - denoised)
    return _finish(run, x, denoise_to_zero)


@torch.no_grad()
def ddim(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
         afs: bool = False):
    """Form B, exact DDIM (the authors' vanilla ODE): z' = z + (σ' − σ)ε(z; σ), i.e. EDM's Euler. 1 NFE/step."""
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = afs_denoised(x, sigma) if afs and i == 0 else run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        x = euler_step(x, sigma, sigma_next, denoised)
    return run.done(x)


@torch.no_grad()
def ddpm_type(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
              noise=None, denoise_to_zero: bool = False):
    """Form C, DDPM-type: Y_{t−1} = (Y_t + (1−α_t)s_t(Y_t) + sqrt(1−α_t)Z_t)/sqrt(α_t). 1 NFE/step.

    In z: mean z − (σ² − σ'²)/σ²·(z − D) (the DDPM posterior mean), noise variance (1−α_t)/ᾱ_t = σ² − σ'²
    (the noise sits inside the 1/sqrt(α_t) factor, as in the authors' description of the sampler).
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
              noise=noise, stats=stats)
    _needs_positive_end(run, "ddpm_type", "C")
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        x = x - (sigma**2 - sigma_next**2) / sigma**2 * (x - denoised)
        x = x + (sigma**2 - sigma_next**2).sqrt() * run.randn_like(x)
    return _finish(run, x, denoise_to_zero)


def ddpm(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None, noise=None):
    """Ancestral DDPM: sample the Gaussian posterior p(z' | z, y = D), variance σ'²(σ² − σ'²)/σ². 1 NFE/step.

    The same map as `euler_ancestral` with eta = 1 (σ_down = σ'²/σ), which runs it; no noise on a step to 0.
    """
    return euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                           dtype=dtype, stats=stats, noise=noise, eta=1.0, s_noise=1.0)


@torch.no_grad()
def accel_sde(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
              noise=None, denoise_to_zero: bool = False):
    """Form D, accelerated SDE (1 NFE/step): half the noise before the score step, half after.

        z⁺ = z + sqrt((σ² − σ'²)/2)·ξ₁
        z' = z⁺ − (σ² − σ'²)/σ²·(z⁺ − D(z⁺; σ)) + sqrt((σ² − σ'²)(1 + σ'²)/(2(1 + σ²)))·ξ₂

    D is evaluated at the unchanged level σ on purpose. The callback reports x = z⁺.
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
              noise=noise, stats=stats)
    _needs_positive_end(run, "accel_sde", "D")
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gap = sigma**2 - sigma_next**2
        x_plus = x + (gap / 2).sqrt() * run.randn_like(x)  # Φ_t
        denoised = run.denoise(x_plus, sigma, i)
        run.report(i, x_plus, sigma, sigma, denoised)
        x = x_plus - gap / sigma**2 * (x_plus - denoised)  # Ψ_t
        x = x + (gap * (1 + sigma_next**2) / (2 * (1 + sigma**2))).sqrt() * run.randn_like(x)
    return _finish(run, x, denoise_to_zero)


def _g_minus_atan(g: float) -> float:
    """g − arctan(g) without cancellation for small g (series g³/3 − g⁵/5 + …)."""
    if abs(g) >= 0.1:
        return g - math.atan(g)
    g2, term, total = g * g, g * g * g, 0.0
    for k in range(3, 25, 2):
        total += term / k if k % 4 == 3 else -term / k
        term *= g2
    return total


def accel_coeff(sigma_prev: float, sigma: float, sigma_next: float) -> float:
    """K_i of form E: [ā_i(σ' − σ) − (arctan σ' − arctan σ)]/(ā_i − ā_{i−1}), ā = 1/(1 + σ²).

    The exact integral of dz = ε dσ when ε is linear in ā through the last two evaluations; evaluated as
    (g − arctan g) + g·σ(σ' − σ)/(1 + σ²) with g = tan(arctan σ' − arctan σ) = (σ' − σ)/(1 + σσ').
    """
    h = sigma_next - sigma
    g = h / (1 + sigma * sigma_next)
    numerator = _g_minus_atan(g) + g * sigma * h / (1 + sigma**2)
    denominator = (sigma_prev - sigma) * (sigma_prev + sigma) / ((1 + sigma**2) * (1 + sigma_prev**2))
    return numerator / denominator


@torch.no_grad()
def accel_ode(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
              afs: bool = False):
    """Form E, accelerated ODE as in the authors' experiments; 1 NFE/step.

        z' = z + (σ' − σ)ε_i + K_i(ε_{i−1} − ε_i),   ε_i = (z_i − D_i)/σ_i,   K_0 = 0  (see `accel_coeff`)

    A 2-step exponential-integrator-type multistep method (ε linear in ā); works on grids ending at 0.
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    eps_prev = None
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = afs_denoised(x, sigma) if afs and i == 0 else run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        eps = (x - denoised) / sigma
        x_next = euler_step(x, sigma, sigma_next, denoised)  # DDIM step.
        if eps_prev is not None:  # Correction with the previous ε.
            x_next = x_next + accel_coeff(float(sigmas[i - 1]), float(sigma), float(sigma_next)) * (eps_prev - eps)
        x, eps_prev = x_next, eps
    return run.done(x)


@torch.no_grad()
def accel_ode2(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
               denoise_to_zero: bool = False):
    """Form F, accelerated ODE, theory form (2 NFE/step; the first step is form A, so NFE = 2N − 1).

        z⁻ = z + α⁻(σ⁻² − σ²)/(2σ²)·(z − D),  α⁻ = (1 + σ²)/(1 + σ⁻²)      (look back to level σ⁻)
        z' = z − a(z − D) − b(1 + σ²)·((z − D)/σ² − (z⁻ − D(z⁻; σ⁻))/σ⁻²)
        a = (σ² − σ'²)/(2σ²),  b = ((σ² − σ'²)/(1 + σ²))² / (4(σ⁻² − σ²)/(1 + σ⁻²))

    The correction extrapolates the drift to the middle of the step (cf. DPM-Solver-2).
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    _needs_positive_end(run, "accel_ode2", "F")
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        a = (sigma**2 - sigma_next**2) / (2 * sigma**2)
        x_next = x - a * (x - denoised)  # DDIM-type step.
        if i > 0:
            sigma_prev = sigmas[i - 1]
            x_back = x + (1 + sigma**2) / (1 + sigma_prev**2) * (sigma_prev**2 - sigma**2) / (2 * sigma**2) * (
                x - denoised)
            denoised_back = run.denoise(x_back, sigma_prev, i)
            b = ((sigma**2 - sigma_next**2) / (1 + sigma**2)) ** 2 / (
                4 * (sigma_prev**2 - sigma**2) / (1 + sigma_prev**2))
            drift_gap = (x - denoised) / sigma**2 - (x_back - denoised_back) / sigma_prev**2
            x_next = x_next - b * (1 + sigma**2) * drift_gap  # Extrapolate the drift to mid-step.
        x = x_next
    return _finish(run, x, denoise_to_zero)


def _nfe_steps(sigmas: torch.Tensor, denoise_to_zero: bool = False, afs: bool = False) -> int:
    return len(sigmas) - 1 + int(denoise_to_zero) - int(afs)


def _nfe_accel_ode2(sigmas: torch.Tensor, denoise_to_zero: bool = False) -> int:
    return 2 * (len(sigmas) - 1) - 1 + int(denoise_to_zero)


def _register() -> None:
    from diffspace.samplers.registry import register

    register("ddim_type", ddim_type, _nfe_steps, order=1,
             summary="Li et al.'s form A is the DDIM-type sampler of their theory (Euler in σ²).")
    register("ddim", ddim, _nfe_steps, order=1,
             summary="Li et al.'s form B is exact DDIM, the same map as EDM's Euler.")
    register("ddpm_type", ddpm_type, _nfe_steps, stochastic=True, order=0.5,
             summary="Li et al.'s form C is the vanilla DDPM-type stochastic sampler.")
    register("ddpm", ddpm, _nfe_steps, stochastic=True, order=0.5,
             summary="Ancestral DDPM samples the Gaussian posterior of each step given the denoiser's estimate.")
    register("accel_sde", accel_sde, _nfe_steps, stochastic=True, order=1,
             summary="Li et al.'s form D is their accelerated stochastic sampler (1 NFE per step).")
    register("accel_ode", accel_ode, _nfe_steps, order=2,
             summary="Li et al.'s form E is the accelerated two-step ODE sampler of their experiments.")
    register("accel_ode2", accel_ode2, _nfe_accel_ode2, order=2,
             summary="Li et al.'s form F is the accelerated ODE sampler of their theory (2 NFE per step).")


_register()
