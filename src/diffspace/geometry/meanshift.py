"""Optimal sampling as annealed mean shift (Chen et al. 2023).

One Gaussian mean-shift update with bandwidth h moves x to m_h(x) = Σ_k K_h(x − y_k) y_k / Σ_k K_h(x − y_k), the
kernel-weighted mean of the data; with h = σ this is the optimal denoiser of the dataset. An Euler step of the
probability-flow ODE from σ to σ' with that denoiser is x ← x + (1 − σ'/σ)(m_σ(x) − x): mean shift with step
size 1 − σ'/σ and a bandwidth annealed from σ_max to σ_min. By Jensen's inequality such a step (step size in
(0, 2)) never lowers the Gaussian-KDE log-likelihood log p_σ(x) at the bandwidth of that step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffspace.errors import ConfigError

__all__ = ["kde_log_prob", "kernel_mean", "likelihood_steps", "mean_shift", "mean_shift_view"]


def _data_matrix(data) -> torch.Tensor:
    """The dataset as a float64 matrix [K, d]."""
    if not isinstance(data, torch.Tensor):
        data = torch.as_tensor(np.asarray(data))
    if data.ndim < 1 or len(data) == 0:
        raise ConfigError("mean shift needs a non-empty dataset [K, *event_shape]")
    return data.reshape(len(data), -1).to(torch.float64)


def _flat(x: torch.Tensor, d: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 1 or x[0].numel() != d:
        raise ConfigError(f"points of shape {tuple(x.shape)} do not match data of dimension {d}: "
                          "pass [batch, *event_shape] with the data's event shape")
    return x.reshape(x.shape[0], d).to(torch.float64)


def _logits(x: torch.Tensor, y: torch.Tensor, h: float) -> torch.Tensor:
    """−‖x − y_k‖²/(2h²) from direct differences (no ‖x‖² − 2x·y + ‖y‖² cancellation at small h)."""
    dist = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    return -(dist**2) / (2 * h * h)


def _row_blocks(n_rows: int, n_data: int):
    """Row ranges keeping a logit block under ~16M entries."""
    step = max(1, (1 << 24) // max(n_data, 1))
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def kernel_mean(data, x: torch.Tensor, h: float) -> torch.Tensor:
    """m_h(x): the Gaussian-kernel-weighted mean of the data around each row of x (one mean-shift update)."""
    if not h > 0:
        raise ConfigError(f"bandwidth h={h} must be > 0")
    y = _data_matrix(data)
    flat = _flat(x, y.shape[1])
    out = torch.empty_like(flat)
    for s, e in _row_blocks(len(flat), len(y)):
        w = torch.softmax(_logits(flat[s:e], y, float(h)), dim=1)
        out[s:e] = torch.stack([row @ y for row in w])  # one product per row: batch-size independent
    return out.reshape(x.shape)


def kde_log_prob(data, x: torch.Tensor, h: float) -> torch.Tensor:
    """log p_h(x) = log (1/K) Σ_k N(x; y_k, h²I), the Gaussian KDE of the data with bandwidth h, per row [B]."""
    if not h > 0:
        raise ConfigError(f"bandwidth h={h} must be > 0")
    y = _data_matrix(data)
    flat = _flat(x, y.shape[1])
    out = torch.empty(len(flat), dtype=torch.float64)
    for s, e in _row_blocks(len(flat), len(y)):
        out[s:e] = torch.logsumexp(_logits(flat[s:e], y, float(h)), dim=1)
    return out - math.log(len(y)) - 0.5 * y.shape[1] * math.log(2 * math.pi * h * h)


def mean_shift(data, x: torch.Tensor, sigmas, *, return_path: bool = False):
    """Annealed Gaussian mean shift: for each bandwidth σ_i of `sigmas`, x ← x + (1 − σ_{i+1}/σ_i)(m_{σ_i}(x) − x).

    `data` [K, *event] (tensor or array), `x` [B, *event] (e.g. latents scaled to σ_0), `sigmas` decreasing and
    positive except possibly a final 0 (then the last update lands on the kernel mean). Returns the final points
    (float64), or every iterate [len(sigmas), B, *event] with `return_path=True`. Same result as the Euler
    sampler with the dataset's optimal denoiser (`denoisers.Empirical`).
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if len(sigmas) < 2:
        raise ConfigError(f"mean shift needs at least two bandwidths, got {len(sigmas)}")
    if (sigmas[:-1] <= 0).any() or (sigmas[1:] > sigmas[:-1]).any() or sigmas[-1] < 0:
        raise ConfigError("bandwidths must decrease and stay > 0 (a final 0 is allowed): pass e.g. grids.edm(18)")
    y = _data_matrix(data)
    shape = tuple(torch.as_tensor(x).shape)
    x = _flat(x, y.shape[1]).clone()
    path = [x.clone()]
    for i in range(len(sigmas) - 1):
        h, h_next = float(sigmas[i]), float(sigmas[i + 1])
        m = kernel_mean(y, x, h)
        x = x + (1 - h_next / h) * (m - x)
        path.append(x.clone())
    if return_path:
        return torch.stack(path).reshape(len(path), *shape)
    return x.reshape(shape)


def mean_shift_view(x: torch.Tensor, sigmas: torch.Tensor, sigma_hat: torch.Tensor | None = None):
    """Any sampler step x_i → x_{i+1} read as a mean-shift step x_{i+1} = x_i + λ_i (m̂_i − x_i).

    λ_i = 1 − σ_{i+1}/σ̂_i is the Euler (DDIM) step size and m̂_i = x_i + (x_{i+1} − x_i)/λ_i the implied target:
    D(x_i; σ_i) for Euler, an extrapolation along the denoising trajectory for second-order samplers.
    x: [K+1, B, …] (a Trajectory's .x), sigmas [K+1], sigma_hat [K] (default sigmas[:-1]). Returns (λ [K],
    targets [K, B, …]).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    sigma_hat = sigmas[:-1] if sigma_hat is None else torch.as_tensor(sigma_hat, dtype=torch.float64)
    if len(x) < 2 or len(sigmas) != len(x) or len(sigma_hat) != len(x) - 1:
        raise ConfigError(f"{len(x)} points, {len(sigmas)} sigmas, {len(sigma_hat)} sigma_hat: pass a Trajectory's "
                          ".x, .sigmas and .sigma_hat")
    lam = 1 - sigmas[1:] / sigma_hat
    if (lam <= 0).any():
        raise ConfigError("a step does not lower sigma: the mean-shift view needs decreasing noise levels")
    view = lam.reshape(-1, *([1] * (x.ndim - 1)))
    return lam, x[:-1] + (x[1:] - x[:-1]) / view


def likelihood_steps(optimum, x: torch.Tensor, sigma_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KDE log-likelihood at each step's bandwidth before and after the step: (log p_{σ̂_i}(x_i),
    log p_{σ̂_i}(x_{i+1})), each [K, B]. `optimum`: a `denoisers.Empirical` (its `log_prob`) or a data array."""
    x = torch.as_tensor(x, dtype=torch.float64)
    sigma_hat = torch.as_tensor(sigma_hat, dtype=torch.float64)
    if len(x) != len(sigma_hat) + 1:
        raise ConfigError(f"{len(x)} points for {len(sigma_hat)} steps: pass a Trajectory's .x and .sigma_hat")

    def logp(points, h):
        if hasattr(optimum, "log_prob"):
            return optimum.log_prob(points, float(h))
        return kde_log_prob(optimum, points, float(h))

    before = torch.stack([logp(x[i], sigma_hat[i]) for i in range(len(sigma_hat))])
    after = torch.stack([logp(x[i + 1], sigma_hat[i]) for i in range(len(sigma_hat))])
    return before, after
