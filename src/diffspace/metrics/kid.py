"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (x·y/d + 1)³, averaged over random subsets as in StyleGAN3's `kernel_inception_distance.py`
(100 subsets of at most 1000 samples each)."""

from __future__ import annotations

import numpy as np

from diffspace.errors import DataError


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y/d + 1)³ for all pairs of rows."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² estimate: mean of k over distinct pairs within x and within y, minus twice the cross mean."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise DataError(f"MMD needs at least 2 samples per set; got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID and the standard deviation of its per-subset estimates (torch-fidelity's `kid_std` convention).

    Each subset draws m = min(n₁, n₂, max_subset_size) rows of each set without replacement.
    """
    f1, f2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise DataError(f"KID needs two feature sets of the same dimension; got shapes {f1.shape} and {f2.shape}")
    if num_subsets < 1:
        raise DataError(f"num_subsets must be >= 1; got {num_subsets}")
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    rng = np.random.RandomState(seed)
    vals = np.empty(num_subsets)
    for s in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        vals[s] = mmd2_unbiased(x, y)
    return float(vals.mean()), float(vals.std())
