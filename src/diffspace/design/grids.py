"""Noise-level grids σ_0 > σ_1 > … > σ_{N−1} (> σ_N = 0) of EDM's Table 1 and of Li et al. (2024).

Every grid is a pure function returning a float64 tensor of noise levels (σ, not t), ending with 0 unless
`append_zero=False`. Samplers take these directly; the Table-1 sampler maps them to t with σ⁻¹.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffspace.errors import ConfigError

__all__ = ["edm", "vp", "ve", "iddpm", "iddpm_table", "exponential", "li", "custom", "check"]


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"steps={n!r} must be an integer >= 1")
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)):
        raise ConfigError(f"sigma_min={sigma_min} and sigma_max={sigma_max} must be finite")
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _finish(sigmas: torch.Tensor, append_zero: bool) -> torch.Tensor:
    sigmas = sigmas.to(torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if append_zero else sigmas


def _fraction(n: int) -> torch.Tensor:
    """i/(N−1) for i = 0..N−1 (a single step uses σ_max only)."""
    return torch.arange(n, dtype=torch.float64) / max(n - 1, 1)


def edm(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
        append_zero: bool = True) -> torch.Tensor:
    """EDM's polynomial grid (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (Table 1)."""
    _check_range(n, sigma_min, sigma_max)
    if not (math.isfinite(rho) and rho > 0):
        raise ConfigError(f"rho={rho} must be a positive number (EDM uses 7)")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + _fraction(n) * (lo - hi)) ** rho, append_zero)


def exponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                append_zero: bool = True) -> torch.Tensor:
    """Log-uniform grid: ln σ_i equally spaced from ln σ_max to ln σ_min (EDM's ρ → ∞ limit)."""
    _check_range(n, sigma_min, sigma_max)
    return _finish(torch.exp(math.log(sigma_max) + _fraction(n) * math.log(sigma_min / sigma_max)), append_zero)


def ve(n: int, sigma_min: float = 0.02, sigma_max: float = 100.0, append_zero: bool = True) -> torch.Tensor:
    """VE grid: t_i = σ_max²(σ_min²/σ_max²)^{i/(N−1)} with σ = sqrt(t), i.e. geometric in σ (Table 1)."""
    _check_range(n, sigma_min, sigma_max)
    t = sigma_max**2 * (sigma_min**2 / sigma_max**2) ** _fraction(n)
    return _finish(t.sqrt(), append_zero)


def vp(n: int, sigma_min: float | None = None, sigma_max: float | None = None, epsilon_s: float = 1e-3,
       beta_d: float = 19.9, beta_min: float = 0.1, append_zero: bool = True) -> torch.Tensor:
    """VP grid: t_i = 1 + i/(N−1)(ε_s − 1), σ_i = σ_VP(t_i) with β refitted to [sigma_min, sigma_max].

    Defaults: sigma_min = σ_VP(ε_s) ≈ 0.010486, sigma_max = σ_VP(1) ≈ 152.167 for β_d=19.9, β_min=0.1.
    """
    from diffspace.design.schedules import VPSchedule

    base = VPSchedule(beta_d, beta_min)
    sigma_min = float(base.sigma(epsilon_s)) if sigma_min is None else sigma_min
    sigma_max = float(base.sigma(1.0)) if sigma_max is None else sigma_max
    _check_range(n, sigma_min, sigma_max)
    if not 0 < epsilon_s < 1:
        raise ConfigError(f"epsilon_s={epsilon_s} must lie in (0, 1)")
    t = 1 + _fraction(n) * (epsilon_s - 1)
    return _finish(VPSchedule.fit(sigma_min, sigma_max, epsilon_s).sigma(t), append_zero)


def iddpm_table(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> torch.Tensor:
    """u_0 > … > u_M = 0: u_{j−1} = sqrt((u_j² + 1)/max(ᾱ_{j−1}/ᾱ_j, C1) − 1), ᾱ_j = sin²(½π j/(M(C2+1)))."""
    if M < 2:
        raise ConfigError(f"M={M} must be >= 2 (iDDPM uses 1000)")
    j = torch.arange(M + 1, dtype=torch.float64)
    alpha_bar = torch.sin(0.5 * math.pi * j / (M * (C2 + 1))) ** 2
    u = torch.zeros(M + 1, dtype=torch.float64)
    for k in range(M, 0, -1):
        ratio = max(float(alpha_bar[k - 1] / alpha_bar[k]), C1)
        u[k - 1] = math.sqrt((float(u[k]) ** 2 + 1) / ratio - 1)
    return u


def iddpm(n: int, sigma_min: float = 0.002, sigma_max: float = 81.0, M: int = 1000, C1: float = 0.001,
          C2: float = 0.008, append_zero: bool = True) -> torch.Tensor:
    """iDDPM grid: the u_j in [sigma_min, sigma_max] (j = j0..M−1), N of them picked evenly (Table 1).

    Index i picks u_j with j = j0 + (M−1−j0)/(N−1)·i rounded to the nearest integer, ties to even, as EDM's code
    does (the paper writes ⌊· + ½⌋). In floating point some step counts hit exact .5 ties (with the default
    range, e.g. N = 59, 99, 103), where the two roundings pick neighbouring levels.
    """
    _check_range(n, sigma_min, sigma_max)
    u = iddpm_table(M, C1, C2)
    kept = u[(u >= sigma_min) & (u <= sigma_max)]
    if len(kept) < n:
        raise ConfigError(f"only {len(kept)} iDDPM levels lie in [{sigma_min}, {sigma_max}]; use steps <= {len(kept)}")
    step = (len(kept) - 1) / max(n - 1, 1) * torch.arange(n, dtype=torch.float64)  # EDM's order of operations
    idx = torch.round(step).to(torch.int64)  # half to even, like EDM
    return _finish(kept[idx], append_zero)


def li(T: int, c0: float = 2.0, c1: float = 4.0, append_zero: bool = False) -> torch.Tensor:
    """Li et al. (2024) learning-rate schedule as noise levels σ_T > … > σ_1 (T levels, T − 1 steps).

    β_1 = T^{−c0}, β_{t+1} = (c1 log T/T)·min{β_1(1 + c1 log T/T)^t, 1}; ᾱ_t = ∏_{k≤t}(1 − β_k) and
    σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), so σ_1 = sqrt(β_1/(1 − β_1)) ≈ T^{−c0/2} > 0 and σ_T grows with T. The theory
    stops at σ_1 (it compares with the noised X_1), hence no final 0 unless `append_zero=True`.
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise ConfigError(f"T={T!r} must be an integer >= 2")
    if not (math.isfinite(c0) and c0 > 0 and math.isfinite(c1) and c1 > 0):
        raise ConfigError(f"c0={c0} and c1={c1} must be positive numbers (Li et al. use e.g. c0=2, c1=4)")
    rate = c1 * math.log(T) / T
    if rate >= 1:
        raise ConfigError(f"c1*log(T) = {c1 * math.log(T):.4g} >= T = {T}: the schedule's beta would reach 1; "
                          f"use a smaller c1 (< {T / math.log(T):.4g}) or a larger T")
    beta_1 = float(T) ** (-c0)
    betas = [beta_1] + [rate * min(beta_1 * (1 + rate) ** t, 1.0) for t in range(1, T)]
    log_alpha_bar = torch.tensor([math.log1p(-b) for b in betas], dtype=torch.float64).cumsum(0)
    sigmas = torch.expm1(-log_alpha_bar).sqrt()  # σ_t² = 1/ᾱ_t − 1, accurate for tiny β
    return _finish(sigmas.flip(0), append_zero)


def custom(values: Sequence[float] | torch.Tensor, append_zero: bool = False) -> torch.Tensor:
    """A user-given grid, checked: finite, positive, strictly decreasing (a final 0 is allowed)."""
    sigmas = torch.as_tensor(values, dtype=torch.float64).flatten()
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return check(sigmas)


def check(sigmas: torch.Tensor) -> torch.Tensor:
    """Validate a grid for a sampler and return it (as given)."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ConfigError(f"a grid needs at least 2 noise levels (one step), got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ConfigError(f"grid contains NaN or Inf: {sigmas.tolist()}")
    if (sigmas < 0).any():
        raise ConfigError(f"grid contains negative noise levels: {sigmas[sigmas < 0].tolist()}")
    diffs = sigmas[1:] - sigmas[:-1]
    if (diffs >= 0).any():
        i = int(torch.nonzero(diffs >= 0)[0])
        raise ConfigError(
            f"grid must be strictly decreasing, but sigma[{i}]={float(sigmas[i]):g} <= sigma[{i + 1}]="
            f"{float(sigmas[i + 1]):g}; sort it in decreasing order"
        )
    return sigmas
