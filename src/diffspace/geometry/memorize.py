"""Asymptotics of the optimal denoiser: memorisation.

As σ → 0 the optimal denoiser's weights collapse onto the nearest training point, so optimal sampling ends on
training examples. Measured as the distance of each sample to its nearest training point relative to the
median distance between two training points: ≈ 0 for a copy, of order 0.1–1 for a new image.
"""

from __future__ import annotations

import numpy as np
import torch

from diffspace.errors import ConfigError

__all__ = ["median_pairwise_distance", "memorization", "nearest_neighbours"]


def _chunks(data, size: int):
    for s in range(0, len(data), size):
        c = data[s:s + size]
        c = c if isinstance(c, torch.Tensor) else torch.as_tensor(np.asarray(c))
        yield s, c.reshape(len(c), -1).to(torch.float64)


def nearest_neighbours(samples: torch.Tensor, data, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean distance [B] and index [B] of each sample's nearest data point (data read in chunks)."""
    x = torch.as_tensor(samples).reshape(len(samples), -1).to(torch.float64)
    if len(data) == 0:
        raise ConfigError("nearest_neighbours needs a non-empty dataset")
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(x), dtype=torch.long)
    for start, y in _chunks(data, chunk):
        if y.shape[1] != x.shape[1]:
            raise ConfigError(f"samples of dimension {x.shape[1]} and data of dimension {y.shape[1]} differ: "
                              "compare samples with the dataset they were generated for")
        dist, idx = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
        better = dist < best
        best = torch.where(better, dist, best)
        index = torch.where(better, idx + start, index)
    return best, index


def median_pairwise_distance(data, max_points: int = 2000, seed: int = 0) -> float:
    """Median distance between two distinct data points (over a seeded subset of at most max_points points)."""
    n = len(data)
    if n < 2:
        raise ConfigError("the median inter-sample distance needs at least two data points")
    pick = np.sort(np.random.RandomState(seed).choice(n, min(n, max_points), replace=False))
    rows = data[pick] if isinstance(data, (np.ndarray, torch.Tensor)) else np.stack([np.asarray(data[i]) for i in pick])
    y = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    y = y.reshape(len(y), -1).to(torch.float64)
    d = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(y), len(y), offset=1)
    return float(d[iu[0], iu[1]].median())


def memorization(samples: torch.Tensor, data, *, threshold: float = 1e-3, scale: float | None = None) -> dict:
    """Nearest-training-point distances of `samples`, relative to the median inter-sample distance `scale`.

    Returns {'relative': [B] tensor, 'index': [B] nearest training index, 'scale', 'threshold', 'memorized': the
    share with relative distance <= threshold, 'novel': 1 − memorized, 'median': median relative distance}.
    """
    if not threshold > 0:
        raise ConfigError(f"threshold={threshold} must be > 0")
    scale = median_pairwise_distance(data) if scale is None else float(scale)
    dist, index = nearest_neighbours(samples, data)
    rel = dist / scale
    memorized = float((rel <= threshold).double().mean())
    return {"relative": rel, "index": index, "scale": scale, "threshold": float(threshold), "memorized": memorized,
            "novel": 1.0 - memorized, "median": float(rel.median())}
