"""EDM's samplers (Karras et al. 2022): Euler, Heun (Algorithm 1), stochastic churn (Algorithm 2) and the
Table-1 sampler for any σ(t), s(t) and grid (the paper's Section 3 and Appendix C). Names follow the paper:
t_hat, x_hat, d_cur, d_prime.
"""

from __future__ import annotations

import torch

from diffspace.design import grids
from diffspace.design.schedules import VPSchedule, get_scaling, get_schedule
from diffspace.errors import ConfigError
from diffspace.samplers.base import SQRT2_MINUS_1, Run, call_model, check_latents, euler_step, model_dtype, to_d
from diffspace.samplers.options import validate


@torch.no_grad()
def euler(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None):
    """Euler steps the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (DDIM), with 1 NFE per step."""
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        denoised = run.denoise(x, sigmas[i], i)
        run.report(i, x, sigmas[i], sigmas[i], denoised)
        x = euler_step(x, sigmas[i], sigmas[i + 1], denoised)
    return run.done(x)


@torch.no_grad()
def heun(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
         alpha: float = 1.0):
    """Algorithm 1 takes 2nd-order Runge–Kutta steps (α=1 Heun, α=½ midpoint), with Euler on the step to σ=0.

    NFE 2N − 1 on a grid ending at 0.
    """
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha={alpha} must lie in (0, 1] (1 = Heun, 0.5 = midpoint)")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    for i in run.indices():
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, t_cur, i)
        run.report(i, x, t_cur, t_cur, denoised)
        x = _rk2(run, x, t_cur, t_next, denoised, alpha, i)
    return run.done(x)


def _rk2(run: Run, x_hat, t_hat, t_next, denoised, alpha: float, i: int):
    """One step of EDM's α-family from (x̂, t̂) given D(x̂; t̂); Euler when the step ends at σ = 0."""
    if t_next == 0:
        return euler_step(x_hat, t_hat, t_next, denoised)  # Euler step.
    h = t_next - t_hat
    d_cur = to_d(x_hat, t_hat, denoised)
    t_prime = t_hat + alpha * h
    x_prime = x_hat + alpha * h * d_cur
    d_prime = to_d(x_prime, t_prime, run.denoise(x_prime, t_prime, i))
    return x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)  # Apply 2nd order correction.


@torch.no_grad()
def edm(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None, noise=None,
        S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0):
    """Algorithm 2 is Heun with stochastic churn γ_i = min(S_churn/N, √2−1) on S_tmin ≤ σ_i ≤ S_tmax.

    Noise is added *before* the denoiser is evaluated at t̂ = t + γt (t̂ ≤ √2·t). With S_churn = 0 it is
    Algorithm 1. As in EDM, a noise draw is made at every step once S_churn > 0 (same per-seed RNG stream).
    """
    if S_churn < 0 or S_noise < 0:
        raise ConfigError(f"S_churn={S_churn} and S_noise={S_noise} must be >= 0")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
              noise=noise, stats=stats)
    x, sigmas = run.x, run.sigmas
    round_sigma = getattr(model, "round_sigma", None)
    for i in run.indices():
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # Increase noise temporarily.
        gamma = min(S_churn / run.steps, SQRT2_MINUS_1) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        if round_sigma is not None and gamma > 0:
            t_hat = torch.as_tensor(round_sigma(t_hat), dtype=run.dtype, device=x.device)
        x_hat = x
        if S_churn > 0:
            eps = run.randn_like(x)
            x_hat = x + (t_hat**2 - t_cur**2).clamp_min(0).sqrt() * S_noise * eps
        denoised = run.denoise(x_hat, t_hat, i)
        run.report(i, x_hat, t_cur, t_hat, denoised)
        x = _rk2(run, x_hat, t_hat, t_next, denoised, 1.0, i)
    return run.done(x)


# Default σ range of each Table-1 discretisation (EDM's ablation_sampler); the VP one depends on epsilon_s.
_VP_DEFAULT = VPSchedule()
DISC_DEFAULTS = {
    "vp": (float(_VP_DEFAULT.sigma(1e-3)), float(_VP_DEFAULT.sigma(1.0))),
    "ve": (0.02, 100.0),
    "iddpm": (0.002, 81.0),
    "edm": (0.002, 80.0),
}
SOLVERS = ("euler", "heun")
# Options of `ablation` that `diffspace generate` sets from its own flags (not through --opt).
ABLATION_FIXED = ("class_labels", "noise", "callback", "stats", "extra_args", "dtype", "num_steps", "sigma_min",
                  "sigma_max", "rho", "discretization")


def default_sigma_range(discretization: str, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """EDM's default (σ_min, σ_max) of a discretisation; for 'vp' σ_min = σ_VP(ε_s) with β_d=19.9, β_min=0.1."""
    if discretization == "vp":
        return float(_VP_DEFAULT.sigma(epsilon_s)), float(_VP_DEFAULT.sigma(1.0))
    return DISC_DEFAULTS[discretization]


@torch.no_grad()
def ablation(net, latents: torch.Tensor, *, class_labels=None, num_steps: int = 18, sigma_min: float | None = None,
             sigma_max: float | None = None, rho: float = 7.0, solver: str = "heun", discretization: str = "edm",
             schedule: str = "linear", scaling: str = "none", epsilon_s: float = 1e-3, C_1: float = 0.001,
             C_2: float = 0.008, M: int = 1000, alpha: float = 1.0, S_churn: float = 0.0, S_min: float = 0.0,
             S_max: float = float("inf"), S_noise: float = 1.0, noise=None, callback=None, dtype=None,
             stats: dict | None = None, extra_args: dict | None = None) -> torch.Tensor:
    """The Table-1 sampler runs Algorithms 1 and 2 for any σ(t), s(t) and grid, with EDM's ablation options.

    `latents` are unit-variance; the result is the final x (s(0)·y space, i.e. data space for t_N = 0) in the
    state precision (float64 unless `dtype`), as EDM's ablation_sampler returns it. The model is called in
    the dtype `model_dtype` picks and its results are cast back, as in every sampler.
    """
    validate("ablation", ablation, dict(
        num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, solver=solver,
        discretization=discretization, schedule=schedule, scaling=scaling, epsilon_s=epsilon_s, C_1=C_1, C_2=C_2,
        M=M, alpha=alpha, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, dtype=dtype))
    check_latents(latents, "latents")
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    if discretization not in DISC_DEFAULTS:
        raise ConfigError(f"unknown discretization {discretization!r}: choose one of {', '.join(DISC_DEFAULTS)}")
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha={alpha} must lie in (0, 1]")
    dtype = dtype or torch.float64
    lo, hi = default_sigma_range(discretization, epsilon_s)
    sigma_min = lo if sigma_min is None else sigma_min
    sigma_max = hi if sigma_max is None else sigma_max
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))  # Respect the network's σ range.
    sigma_max = min(sigma_max, getattr(net, "sigma_max", float("inf")))
    round_sigma = getattr(net, "round_sigma", lambda s: torch.as_tensor(s))

    # Noise levels of the chosen discretisation, without the final 0.
    if discretization == "vp":
        sigma_steps = grids.vp(num_steps, sigma_min, sigma_max, epsilon_s, append_zero=False)
    elif discretization == "ve":
        sigma_steps = grids.ve(num_steps, sigma_min, sigma_max, append_zero=False)
    elif discretization == "iddpm":
        sigma_steps = grids.iddpm(num_steps, sigma_min, sigma_max, M, C_1, C_2, append_zero=False)
    else:
        sigma_steps = grids.edm(num_steps, sigma_min, sigma_max, rho, append_zero=False)

    # σ(t) and s(t); the VP schedule uses β refitted to the σ range, as EDM does.
    sched = VPSchedule.fit(sigma_min, sigma_max, epsilon_s) if schedule == "vp" else get_schedule(schedule)
    scale = get_scaling(scaling, sched)
    sigma, sigma_deriv, sigma_inv = sched.sigma, sched.sigma_deriv, sched.sigma_inv
    s, s_deriv = scale.s, scale.s_deriv

    def rs(v):
        return torch.as_tensor(round_sigma(v), dtype=dtype)

    t_steps = sigma_inv(rs(sigma_steps).to(dtype))
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0
    device = latents.device
    t_steps = t_steps.to(device)

    call_dtype = model_dtype(net, latents)
    extra = {**({"class_labels": class_labels} if class_labels is not None else {}), **(extra_args or {})}

    def D(x, t, i):
        counter["nfe"] += 1
        return call_model(net, x / s(t), sigma(t) * torch.ones(x.shape[0], dtype=dtype, device=device),
                          call_dtype=call_dtype, out_dtype=dtype, extra_args=extra, step=i)

    def f(x, t, denoised):
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    counter = {"nfe": 0}
    x_next = latents.to(dtype) * (sigma(t_steps[0]) * s(t_steps[0]))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, SQRT2_MINUS_1) if S_min <= sigma(t_cur) <= S_max else 0.0
        t_hat = sigma_inv(rs(sigma(t_cur) + gamma * sigma(t_cur)).to(device))
        x_hat = s(t_hat) / s(t_cur) * x_cur
        if S_churn > 0:
            eps = noise.randn_like(x_cur) if noise is not None else torch.randn_like(x_cur)
            x_hat = x_hat + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clamp_min(0).sqrt() * s(t_hat) * S_noise * eps
        # Euler step.
        h = t_next - t_hat
        denoised = D(x_hat, t_hat, i)
        if callback is not None:
            callback({"x": x_hat, "i": i, "sigma": sigma(t_cur), "sigma_hat": sigma(t_hat), "denoised": denoised})
        d_cur = f(x_hat, t_hat, denoised)
        x_prime = x_hat + alpha * h * d_cur
        t_prime = t_hat + alpha * h
        # Apply 2nd order correction.
        if solver == "euler" or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            d_prime = f(x_prime, t_prime, D(x_prime, t_prime, i))
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    if stats is not None:
        stats["nfe"] = stats.get("nfe", 0) + counter["nfe"]
    return x_next




def _register() -> None:
    from diffspace.samplers.registry import nfe_heun, nfe_one_per_step, register

    register("euler", euler, nfe_one_per_step, order=1,
             summary="Euler's method steps the probability-flow ODE (DDIM) with 1 NFE per step.")
    register("heun", heun, nfe_heun, order=2,
             summary="EDM's Algorithm 1 takes 2nd-order Runge–Kutta steps (Heun; alpha=0.5 gives the midpoint rule).")
    register("edm", edm, nfe_heun, stochastic=True, order=2,
             summary="EDM's Algorithm 2 adds stochastic churn to Heun's method (deterministic when S_churn = 0).")


_register()
