"""The low-NFE family every new sampler is compared with: DPM-Solver-2, DPM-Solver++(2M/3M), iPNDM, Euler
ancestral and DPM-Solver++(2M) SDE, in EDM's σ(t)=t, s(t)=1 coordinates (x is unscaled, D(x; σ) the denoiser).

Where k-diffusion has the same algorithm (`sample_dpm_2`, `sample_dpmpp_2m`, `sample_euler_ancestral`,
`sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde` with eta=0) the steps are the same, including the step to σ = 0.
Noise comes from `noise=` (per-sample generators) instead of torch's global RNG or a Brownian tree.
Nothing is clipped or thresholded. `afs=True` replaces the first denoiser call by the analytical first step.
"""

from __future__ import annotations

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, euler_step, to_d


def afs_denoised(x: torch.Tensor, sigma) -> torch.Tensor:
    """Analytical first step (AMED and GITS): assume dx/dσ = x/sqrt(1 + σ²), i.e. D = x − σx/sqrt(1 + σ²)."""
    return x - sigma * x / (1 + sigma**2).sqrt()


def _denoise(run: Run, x, sigma, i: int, afs: bool):
    return afs_denoised(x, sigma) if afs and i == 0 else run.denoise(x, sigma, i)


@torch.no_grad()
def dpm_2(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
          r: float = 0.5, afs: bool = False):
    """DPM-Solver-2 (Lu et al. 2022), singlestep, 2 NFE/step: intermediate level σ_m = σ^{1−r}σ'^r (r=½: log-midpoint).

    x_m = x + (σ_m − σ)d, x' = x + (σ' − σ)((1 − 1/(2r))d + d_m/(2r)); the step to σ' = 0 is Euler.
    """
    if not 0 < r <= 1:
        raise ConfigError(f"r={r} must lie in (0, 1] (0.5 = DPM-Solver-2)")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(run, x, sigma, i, afs)
        run.report(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = euler_step(x, sigma, sigma_next, denoised)  # Euler step.
            continue
        d = to_d(x, sigma, denoised)
        sigma_mid = (sigma.log() + r * (sigma_next.log() - sigma.log())).exp()
        x_mid = x + (sigma_mid - sigma) * d
        d_mid = to_d(x_mid, sigma_mid, run.denoise(x_mid, sigma_mid, i))
        x = x + (sigma_next - sigma) * ((1 - 1 / (2 * r)) * d + 1 / (2 * r) * d_mid)
    return run.done(x)


@torch.no_grad()
def dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
             afs: bool = False):
    """DPM-Solver++(2M) (Lu et al. 2022b), data prediction, 1 NFE/step. With h = log(σ/σ'), r = h_{i−1}/h_i:

    x' = (σ'/σ)x + (1 − σ'/σ)·((1 + 1/(2r))D_i − D_{i−1}/(2r)); first step and step to σ' = 0 are first order.
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    old_denoised = None
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(run, x, sigma, i, afs)
        run.report(i, x, sigma, sigma, denoised)
        target = denoised
        if old_denoised is not None and sigma_next > 0:
            r = (sigmas[i - 1] / sigma).log() / (sigma / sigma_next).log()
            target = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old_denoised
        x = euler_step(x, sigma, sigma_next, target)
        old_denoised = denoised
    return run.done(x)


@torch.no_grad()
def dpmpp_3m(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
             afs: bool = False, compat: bool = False):
    """DPM-Solver++(3M), data prediction, 1 NFE/step. With λ = −log σ, h = λ' − λ, φ₂ = 1 − (1 − e^{−h})/h,
    φ₃ = φ₂/h − ½ and D1 ≈ hD', D2 ≈ h²D''/2 the divided differences of the last three D's in λ:

        x' = (σ'/σ)x + (1 − σ'/σ)D_i + φ₂·D1 − 2φ₃·D2

    which integrates exactly when D is quadratic in λ (third order). `compat=True` uses −φ₃·D2 instead, as
    DPM-Solver, diffusers and k-diffusion (`sample_dpmpp_3m_sde`, eta=0) do: that term is half the Taylor
    term, so the method is then only second order. Steps 1 and 2 use orders 1 and 2; a step to σ' = 0
    returns D_i.
    """
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(run, x, sigma, i, afs)
        run.report(i, x, sigma, sigma, denoised)
        h = None
        if sigma_next == 0:
            x = denoised  # Denoising step.
        else:
            h = (sigma / sigma_next).log()
            x = euler_step(x, sigma, sigma_next, denoised)
            phi_2 = torch.expm1(-h) / h + 1
            if h_2 is not None:  # Third order.
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (1 if compat else 2) * (phi_2 / h - 0.5) * d2
            elif h_1 is not None:  # Second order.
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return run.done(x)


def adams_bashforth_weights(nodes: list[float], t_next: float) -> list[float]:
    """Variable-step Adams–Bashforth weights w_j with ∫_{t_0}^{t'} p(t) dt = (t' − t_0)·Σ_j w_j p(t_j) for every
    polynomial p of degree < len(nodes); nodes = [t_0 (current), t_{−1}, …] (exact Lagrange integration)."""
    t0 = nodes[0]
    h = t_next - t0
    s = [(t - t0) / h for t in nodes]  # nodes in units of the step: s_0 = 0, the others < 0
    weights = []
    for j, sj in enumerate(s):
        poly = [1.0]  # ascending coefficients of ∏_{m≠j} (u − s_m)/(s_j − s_m)
        for m, sm in enumerate(s):
            if m == j:
                continue
            scale = 1.0 / (sj - sm)
            poly = [(a - sm * b) * scale for a, b in zip([0.0, *poly], [*poly, 0.0])]
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)))  # ∫_0^1 u^k du = 1/(k+1)
    return weights


@torch.no_grad()
def ipndm(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
          max_order: int = 4, afs: bool = False):
    """iPNDM (Zhang & Chen 2022), variable-step: Adams–Bashforth in σ on d = (x − D)/σ, 1 NFE/step.

    x' = x + (σ' − σ)·Σ_j w_j d_{i−j}, with the weights of `adams_bashforth_weights` for the actual, uneven
    grid (order k = min(max_order, i + 1): orders ramp up 1, 2, …, max_order). The same method as k-diffusion's
    `sample_lms` (registered also as `lms`); diff-sampler's `ipndm_v` differs at orders 3 and 4 (see `ipndm_v`).
    """
    if max_order not in (1, 2, 3, 4):
        raise ConfigError(f"max_order={max_order!r} must be 1, 2, 3 or 4")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    history: list[torch.Tensor] = []  # d_i, d_{i−1}, …
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(run, x, sigma, i, afs)
        run.report(i, x, sigma, sigma, denoised)
        history = [to_d(x, sigma, denoised), *history][:max_order]
        if len(history) == 1:
            x = euler_step(x, sigma, sigma_next, denoised)  # First step: Euler.
            continue
        nodes = [float(sigmas[i - j]) for j in range(len(history))]
        weights = adams_bashforth_weights(nodes, float(sigma_next))
        x = x + (sigma_next - sigma) * sum(w * d for w, d in zip(weights, history))
    return run.done(x)


@torch.no_grad()
def euler_ancestral(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
                    noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral (k-diffusion): Euler to σ_down, then noise σ_up, with σ_up = min(σ', η·σ'·sqrt(1 − σ'²/σ²)),
    σ_down = sqrt(σ'² − σ_up²). η = 1 is ancestral DDPM; η = 0 is Euler. No noise on the step to σ' = 0."""
    if eta < 0 or s_noise < 0:
        raise ConfigError(f"eta={eta} and s_noise={s_noise} must be >= 0")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
              noise=noise, stats=stats)
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
        sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
        x = euler_step(x, sigma, sigma_down, denoised)
        if sigma_next > 0:
            x = x + run.randn_like(x) * s_noise * sigma_up
    return run.done(x)


@torch.no_grad()
def dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
                 noise=None, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion), 1 NFE/step. With h = log(σ/σ'):

    x' = (σ'/σ)e^{−ηh}x + (1 − e^{−(1+η)h})D_i + c·(D_i − D_{i−1})/r + σ'·sqrt(1 − e^{−2ηh})·s_noise·ξ,
    c = ½(1 − e^{−(1+η)h}) ('midpoint') or 1 − (1 − e^{−(1+η)h})/((1+η)h) ('heun'); a step to σ' = 0 returns D.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ConfigError(f"solver_type={solver_type!r} must be 'midpoint' or 'heun'")
    if eta < 0 or s_noise < 0:
        raise ConfigError(f"eta={eta} and s_noise={s_noise} must be >= 0")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
              noise=noise, stats=stats)
    x, sigmas = run.x, run.sigmas
    old_denoised = h_last = None
    h = None
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma, i)
        run.report(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised  # Denoising step.
        else:
            h = (sigma / sigma_next).log()
            eta_h = eta * h
            decay = -torch.expm1(-h - eta_h)  # 1 − e^{−(1+η)h}
            x = sigma_next / sigma * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * decay * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + run.randn_like(x) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return run.done(x)


def _nfe_steps(sigmas: torch.Tensor, afs: bool = False) -> int:
    return len(sigmas) - 1 - int(afs)


def _nfe_dpm_2(sigmas: torch.Tensor, afs: bool = False) -> int:
    """2 per step, 1 for a final step to σ = 0, −1 with AFS."""
    return 2 * (len(sigmas) - 1) - int(float(sigmas[-1]) == 0.0) - int(afs)


def _register() -> None:
    from diffspace.samplers.registry import register

    register("dpm_2", dpm_2, _nfe_dpm_2, order=2,
             summary="DPM-Solver-2 (Lu et al. 2022) takes singlestep 2nd-order steps with 2 NFE each.")
    register("dpmpp_2m", dpmpp_2m, _nfe_steps, order=2,
             summary="DPM-Solver++(2M) (Lu et al. 2022) is a 2nd-order multistep solver in data prediction.")
    register("dpmpp_3m", dpmpp_3m, _nfe_steps, order=3,
             summary="DPM-Solver++(3M) is a 3rd-order multistep solver (compat=True gives the peers' 2nd-order form).")
    register("ipndm", ipndm, _nfe_steps, order=4,
             summary="iPNDM (Zhang & Chen 2022) runs variable-step Adams–Bashforth in σ up to order max_order.")
    register("euler_ancestral", euler_ancestral, _nfe_steps, stochastic=True, order=0.5,
             summary="Euler ancestral (k-diffusion) steps down with Euler and adds fresh noise back up.")
    register("dpmpp_2m_sde", dpmpp_2m_sde, _nfe_steps, stochastic=True, order=1,
             summary="DPM-Solver++(2M) SDE (k-diffusion) is the stochastic version of DPM-Solver++(2M).")


_register()
