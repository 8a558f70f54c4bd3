"""Exact and sanity metrics for generated samples (issue 5, item 5).

- `gmm_nll`: mean −log p of samples under a known `GaussianMixture` (nats per sample, or bits/dim).
- `component_weight_error`: how often samples land in each mixture component vs the true weights.
- `sliced_wasserstein`: SW_p between two sample sets, exact 1-D W_p per random direction.
- `memorization_ratio`: nearest-training-neighbour distances relative to the spread of the samples
  (the memorisation measure used with the geometric perspective), plus the common d₁/d₂ < 1/3 criterion.

Samples are arrays of shape [N, *event_shape]; all computations are in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffspace.errors import ConfigError, DataError

__all__ = ["gmm_nll", "component_weight_error", "sliced_wasserstein", "memorization_ratio"]


def _as_flat(x, name: str) -> torch.Tensor:
    """[N, *shape] array/tensor -> float64 [N, D]."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contains NaN/Inf: drop or fix those samples first")
    return x


def _log_probs(samples, mixture, sigma: float, chunk: int) -> torch.Tensor:
    x = torch.as_tensor(samples)
    return torch.cat([mixture.log_prob(x[i : i + chunk], sigma) for i in range(0, len(x), chunk)])


def gmm_nll(samples, mixture, *, sigma: float = 0.0, unit: str = "nats", chunk: int = 4096) -> float:
    """Mean −log p(x; σ) of `samples` [N, *event_shape] under a `diffspace.denoisers.GaussianMixture`.

    `unit`: "nats" (per sample) or "bpd" (bits per dimension, i.e. nats / (d ln 2)). `sigma` > 0 evaluates the
    noised mixture p(x; σ) = Σ π_k N(μ_k, S_k + σ²I), e.g. σ_min for samples that end at a sampler's last level.
    """
    if unit not in ("nats", "bpd"):
        raise ConfigError(f"unit must be 'nats' or 'bpd', got {unit!r}")
    if len(samples) == 0:
        raise DataError("gmm_nll needs at least one sample")
    nll = -float(_log_probs(samples, mixture, sigma, chunk).mean())
    return nll / (mixture.dim * math.log(2)) if unit == "bpd" else nll


def component_weight_error(samples, mixture, *, sigma: float = 0.0, soft: bool = False,
                           chunk: int = 4096) -> dict:
    """Per-component sample frequency vs the true mixture weight.

    Hard (default): each sample goes to its most responsible component argmax_k r_k(x). For samples of the
    mixture itself the expected frequency is π_k only when components barely overlap (misassignment mass ≈ 0).
    Soft (`soft=True`): frequency_k = mean_n r_k(x_n), whose expectation is exactly π_k for mixture samples.
    Returns `frequencies`, `weights`, `abs_error` (tensors [K]), `std_error` (binomial sqrt(π(1−π)/N), the
    scale of abs_error under the true mixture), `max_abs_error` and `total_variation` (½ Σ |f_k − π_k|).
    """
    x = torch.as_tensor(samples)
    if len(x) == 0:
        raise DataError("component_weight_error needs at least one sample")
    r = torch.cat([mixture.responsibilities(x[i : i + chunk], sigma) for i in range(0, len(x), chunk)])
    if soft:
        freq = r.mean(0)
    else:
        freq = torch.bincount(r.argmax(1), minlength=mixture.K).to(torch.float64) / len(r)
    w = mixture.weights.to(freq.device)
    err = (freq - w).abs()
    return {
        "frequencies": freq,
        "weights": w,
        "abs_error": err,
        "std_error": (w * (1 - w) / len(r)).sqrt(),
        "max_abs_error": float(err.max()),
        "total_variation": float(0.5 * err.sum()),
    }


def _wasserstein_1d(xs: torch.Tensor, ys: torch.Tensor, p: float) -> torch.Tensor:
    """W_p^p between empirical measures, column by column: xs [n, L], ys [m, L] sorted along dim 0.

    Exact for any n, m: the quantile functions are step functions with breaks at i/n and j/m, so
    W_p^p = Σ over the merged breaks of (interval length)·|F_x⁻¹(q) − F_y⁻¹(q)|^p at the interval midpoints q.
    """
    n, m = len(xs), len(ys)
    if n == m:
        return (xs - ys).abs().pow(p).mean(0)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                        torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()  # sorted, ends at 1
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    ix = (mid * n).floor().long().clamp_max(n - 1).to(xs.device)
    iy = (mid * m).floor().long().clamp_max(m - 1).to(xs.device)
    return (widths.to(xs.device)[:, None] * (xs[ix] - ys[iy]).abs().pow(p)).sum(0)


def sliced_wasserstein(x, y, num_projections: int = 256, generator: torch.Generator | None = None,
                       p: float = 2, *, block: int = 64) -> float:
    """Sliced Wasserstein distance SW_p(x, y) = (E_θ W_p^p(θ·x, θ·y))^(1/p), θ uniform on the unit sphere.

    x [n, *shape] and y [m, *shape] (sizes may differ); each 1-D W_p is exact (sorting; merged quantile breaks
    for n ≠ m). The expectation over θ is a Monte Carlo mean over `num_projections` directions drawn from
    `generator` (None: a fresh generator seeded with 0, so repeated calls use the same directions).
    Useful fact: for y = x + Δ, W_2²(θ·x, θ·y) = (θ·Δ)², and E_θ (θ·Δ)² = ‖Δ‖²/d, so SW_2 = ‖Δ‖/√d.
    """
    x, y = _as_flat(x, "x"), _as_flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise DataError(f"x has {x.shape[1]} dimensions per sample, y has {y.shape[1]}: compare like with like")
    if num_projections < 1 or not p >= 1:
        raise ConfigError(f"need num_projections >= 1 and p >= 1, got {num_projections} and {p}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], num_projections, generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    total = x.new_zeros(())
    for j in range(0, num_projections, block):  # bounded memory: [n, block] projections at a time
        t = theta[:, j : j + block]
        xs, ys = (x @ t).sort(0).values, (y @ t).sort(0).values
        total = total + _wasserstein_1d(xs, ys, p).sum()
    return float(total / num_projections) ** (1 / p)


def _train_chunks(train, chunk: int, dim: int, device):
    for start in range(0, len(train), chunk):
        part = train[start : start + chunk]
        part = torch.as_tensor(np.asarray(part) if not isinstance(part, torch.Tensor) else part)
        part = part.reshape(part.shape[0], -1).to(device=device, dtype=torch.float64)
        if part.shape[1] != dim:
            raise DataError(f"training data has {part.shape[1]} dimensions per item, samples have {dim}: "
                            "use the same resolution and channels")
        yield start, part


def _rows(train, idx: torch.Tensor) -> torch.Tensor:
    """train[idx] as float64 [len(idx), D] for a tensor, array or memmap (reads only those rows)."""
    if isinstance(train, torch.Tensor):
        rows = train[idx.to(train.device)]
    else:
        rows = torch.as_tensor(np.asarray(train[idx.numpy()]))
    return rows.reshape(len(idx), -1).to(torch.float64)


def _median_pairwise(x: torch.Tensor, max_samples: int, generator: torch.Generator | None) -> float:
    """Median of ‖x_i − x_j‖ over all pairs i < j of (a random subset of at most max_samples) samples;
    for an even number of pairs, the lower of the two middle values (torch.median)."""
    if len(x) > max_samples:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        x = x[torch.randperm(len(x), generator=gen)[:max_samples].to(x.device)]
    if len(x) < 2:
        raise DataError("memorization_ratio needs at least 2 samples to measure their spread")
    dist = torch.cdist(x, x)
    iu = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    return float(dist[iu[0], iu[1]].median())


def memorization_ratio(samples, train, *, chunk: int = 4096, threshold: float = 1 / 3,
                       max_median_samples: int = 2048, generator: torch.Generator | None = None) -> dict:
    """How close generated samples are to training points (memorisation).

    ratio_n = ‖x_n − NN(x_n)‖ / M, with NN the nearest training point (Euclidean, flattened) and M the (lower)
    median of ‖x_i − x_j‖ over all pairs i < j of samples (at most `max_median_samples` of them, a random subset
    drawn from `generator`, default seed 0). Also the common per-sample criterion d₁/d₂ (nearest over second-nearest
    training distance) < 1/3. The training set (tensor, array or memmap [K, *shape]) is streamed in chunks of
    `chunk` rows, so memory is O(N·chunk); samples and training data must be in the same units.

    Returns `nn_distance`, `ratio`, `nn_ratio` (tensors [N]), `nn_index` (LongTensor [N]), `median_distance` (M),
    `mean`/`median` of ratio, `fraction_below` (ratio < threshold) and `fraction_memorized` (d₁/d₂ < threshold).
    """
    x = _as_flat(samples, "samples")
    if len(train) < 2:
        raise DataError("memorization_ratio needs at least 2 training points (for the d1/d2 criterion)")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    N, d = x.shape
    best_d2 = x.new_full((N, 2), math.inf)  # two smallest squared distances (fast formula) and their indices
    best_i = torch.zeros(N, 2, dtype=torch.long, device=x.device)
    x_sq = (x * x).sum(1, keepdim=True)
    for start, y in _train_chunks(train, chunk, d, x.device):
        d2 = x_sq - 2 * x @ y.T + (y * y).sum(1)[None]  # candidates only; exact distances recomputed below
        k = min(2, y.shape[0])
        vals, idx = d2.topk(k, dim=1, largest=False)
        cand_v = torch.cat([best_d2, vals], 1)
        cand_i = torch.cat([best_i, idx + start], 1)
        order = cand_v.argsort(1)[:, :2]
        best_d2, best_i = cand_v.gather(1, order), cand_i.gather(1, order)
    # Exact distances of the two candidates (exactly 0 for a copied training point).
    near = _rows(train, best_i.flatten().cpu()).to(x.device).reshape(N, 2, d)
    dist = (x[:, None, :] - near).norm(dim=2)
    swap = dist[:, 1] < dist[:, 0]
    dist = torch.where(swap[:, None], dist.flip(1), dist)
    best_i = torch.where(swap[:, None], best_i.flip(1), best_i)
    median = _median_pairwise(x, max_median_samples, generator)
    if median <= 0:
        raise DataError("all samples are identical (median inter-sample distance 0): the ratio is undefined")
    ratio = dist[:, 0] / median
    nn_ratio = dist[:, 0] / dist[:, 1].clamp_min(torch.finfo(torch.float64).tiny)
    return {
        "nn_distance": dist[:, 0],
        "nn_index": best_i[:, 0],
        "ratio": ratio,
        "nn_ratio": nn_ratio,
        "median_distance": median,
        "mean": float(ratio.mean()),
        "median": float(ratio.median()),
        "fraction_below": float((ratio < threshold).double().mean()),
        "fraction_memorized": float((nn_ratio < threshold).double().mean()),
    }
