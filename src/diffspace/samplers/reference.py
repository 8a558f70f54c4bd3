"""Ground-truth solutions of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (σ(t)=t, s(t)=1).

- `gaussian_endpoint`: exact for Gaussian data N(μ, S): in S's eigenbasis each coordinate of x − μ scales
  as sqrt(λ + σ²), so x(σ') = μ + V diag(sqrt((λ+σ'²)/(λ+σ²))) Vᵀ (x − μ).
- `solve`: any denoiser, adaptive Dormand–Prince 5(4) (`dopri5`) with error control in u = ln σ, float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffspace.errors import ConfigError, NumericalError

# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)

SIGMA_FLOOR = 1e-7  # σ_to = 0 is reached by integrating to this level: x(σ) − x(0) = O(σ²) for smooth data.


def gaussian_endpoint(gaussian, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact ODE solution x(σ_to) from x(σ_from) for a `diffspace.denoisers.Gaussian` target."""
    flat = gaussian._flat(x)
    lam = gaussian.eigvals[0].to(flat.device)
    ratio = ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
    mu = gaussian.means[0].to(flat.device)
    diff = flat - mu
    if gaussian.eigvecs is None:
        out = mu + diff * ratio
    else:
        V = gaussian.eigvecs[0].to(flat.device)
        out = mu + ((diff @ V) * ratio) @ V.T
    return out.reshape(x.shape)


@torch.no_grad()
def solve(model, x: torch.Tensor, sigma_from: float, sigma_to: float, *, rtol: float = 1e-10, atol: float = 1e-10,
          max_steps: int = 100_000, stats: dict | None = None, extra_args: dict | None = None) -> torch.Tensor:
    """High-accuracy ODE endpoint x(σ_to) for any denoiser (adaptive Dormand–Prince 5(4) in ln σ, float64)."""
    if not sigma_from > 0 or sigma_to < 0 or sigma_to >= sigma_from:
        raise ConfigError(f"need sigma_from > sigma_to >= 0, got {sigma_from} and {sigma_to}")
    extra_args = extra_args or {}
    x = x.to(torch.float64)
    s_in = x.new_ones(x.shape[0])

    def f(u: float, y: torch.Tensor) -> torch.Tensor:  # dx/du = x − D(x; e^u)
        out = model(y, math.exp(u) * s_in, **extra_args).to(torch.float64)
        if not torch.isfinite(out).all():
            raise NumericalError(f"denoiser returned NaN/Inf at sigma={math.exp(u):.6g} in the reference solver")
        return y - out

    u0, u1 = math.log(sigma_from), math.log(max(sigma_to, SIGMA_FLOOR))
    return dopri5(f, x, u0, u1, rtol=rtol, atol=atol, max_steps=max_steps, stats=stats)


def dopri5(f: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, u0: float, u1: float, *,
           rtol: float = 1e-5, atol: float = 1e-5, h0: float | None = None, max_steps: int = 100_000,
           stats: dict | None = None) -> torch.Tensor:
    """y(u1) for dy/du = f(u, y), y(u0) = y0, adaptive Dormand–Prince 5(4) in either direction.

    Error control: RMS over all elements of err / (atol + rtol·max(|y|, |y_new|)) ≤ 1, standard step-size
    update 0.9·e^(−1/5) clipped to [0.2, 5], first-same-as-last. `stats` gains nfe, steps and rejected.
    """
    if u1 == u0:
        return y0
    span = u1 - u0
    h = h0 if h0 is not None else 0.01 * span
    if h * span <= 0:
        raise ConfigError(f"initial step {h} points away from the end point {u1} (start {u0})")
    u, y = u0, y0
    k1 = f(u, y)
    nfe, steps, rejected = 1, 0, 0
    for _ in range(max_steps):
        last = abs(h) >= abs(u1 - u)
        if last:
            h = u1 - u
        ks = [k1]
        for j in range(1, 7):
            ks.append(f(u + _C[j] * h, y + h * sum(a * k for a, k in zip(_A[j], ks))))
        nfe += 6
        y5 = y + h * sum(b * k for b, k in zip(_B5, ks))
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        e = float((err / scale).pow(2).mean().sqrt())
        if not math.isfinite(e):
            raise NumericalError(f"ODE solver produced NaN/Inf at u={u:.6g}: check the model or loosen the range")
        if e <= 1.0:
            u, y, k1 = (u1 if last else u + h), y5, ks[6]  # FSAL: the 7th stage is f at the new point
            steps += 1
            if last:
                break
        else:
            rejected += 1
        h = h * min(5.0, max(0.2, 0.9 * max(e, 1e-10) ** -0.2))
    else:
        raise NumericalError(f"ODE solver did not reach u={u1:.6g} in {max_steps} steps (at u={u:.6g}): "
                             "loosen rtol/atol or raise max_steps")
    if stats is not None:
        for key, val in (("nfe", nfe), ("steps", steps), ("rejected", rejected)):
            stats[key] = stats.get(key, 0) + val
    return y
