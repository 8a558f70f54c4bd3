"""Ground-truth solutions of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (σ(t)=t, s(t)=1).

- `gaussian_endpoint`: exact for Gaussian data N(μ, S): in S's eigenbasis each coordinate of x − μ scales
  as sqrt(λ + σ²), so x(σ') = μ + V diag(sqrt((λ+σ'²)/(λ+σ²))) Vᵀ (x − μ).
- `solve`: any denoiser, adaptive Dormand–Prince 5(4) with error control in u = ln σ, float64.
"""

from __future__ import annotations

import math

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
    nfe = 0

    def f(u: float, y: torch.Tensor) -> torch.Tensor:  # dx/du = x − D(x; e^u)
        nonlocal nfe
        nfe += 1
        out = model(y, math.exp(u) * s_in, **extra_args).to(torch.float64)
        if not torch.isfinite(out).all():
            raise NumericalError(f"denoiser returned NaN/Inf at sigma={math.exp(u):.6g} in the reference solver")
        return y - out

    u, u_end = math.log(sigma_from), math.log(max(sigma_to, SIGMA_FLOOR))
    h = -0.01 * (u - u_end)
    k1 = f(u, x)
    for _ in range(max_steps):
        if u <= u_end:
            break
        h = max(h, u_end - u)  # h < 0: integrate downward
        ks = [k1]
        for j in range(1, 7):
            y = x + h * sum(a * k for a, k in zip(_A[j], ks))
            ks.append(f(u + _C[j] * h, y))
        y5 = x + h * sum(b * k for b, k in zip(_B5, ks))
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(x.abs(), y5.abs())
        e = float((err / scale).pow(2).mean().sqrt())
        if e <= 1.0:
            u, x, k1 = u + h, y5, ks[6]  # FSAL: the 7th stage is f at the new point
        h = h * min(5.0, max(0.2, 0.9 * (e if e > 0 else 1e-10) ** -0.2))
    else:
        raise NumericalError(f"reference solver did not reach sigma={sigma_to} in {max_steps} steps")
    if stats is not None:
        stats["nfe"] = stats.get("nfe", 0) + nfe
    return x
