"""Fréchet distance between Gaussians fitted to features (FID; Heusel et al. 2017, EDM `fid.py` protocol).

    FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½

The trace of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½, which
has the same spectrum as Σ₁Σ₂. This avoids the general (non-symmetric) `sqrtm(Σ₁Σ₂)` of EDM's code, its complex
round-off and its failure on singular covariances (fewer samples than feature dimensions).
"""

from __future__ import annotations

import numpy as np

from diffspace.errors import DataError, NumericalError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor n − 1, as EDM's `calculate_inception_stats`) of `features` [n, d]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"need at least 2 feature vectors of shape [n, d] for statistics; got shape {f.shape}")
    mu = f.mean(axis=0)
    c = f - mu
    sigma = c.T @ c / (f.shape[0] - 1)
    return mu, sigma


def _psd_eigh(a: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix; eigenvalues below the round-off level d·ε·scale
    (scale: the largest eigenvalue unless given) are set to 0."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    if scale is None:
        scale = float(np.abs(w).max(initial=0.0))
    w = np.where(w > max(a.shape[0], 1) * np.finfo(np.float64).eps * scale, w, 0.0)
    return w, v


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at round-off)."""
    w, v = _psd_eigh(np.asarray(a, dtype=np.float64))
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½) for PSD Σ₁, Σ₂.

    Round-off in Σ₁^½ Σ₂ Σ₁^½ is of order ε‖Σ₁‖‖Σ₂‖, so its eigenvalues below d·ε‖Σ₁‖‖Σ₂‖ are taken as 0
    (otherwise their square roots, ~1e-7·√(‖Σ₁‖‖Σ₂‖) each, would add up for singular covariances).
    """
    w1, v1 = _psd_eigh(np.asarray(sigma1, dtype=np.float64))
    s2 = np.asarray(sigma2, dtype=np.float64)
    s1_half = (v1 * np.sqrt(w1)) @ v1.T
    scale = float(w1.max(initial=0.0)) * float(np.linalg.norm(s2))  # Frobenius norm bounds ‖Σ₂‖ cheaply
    w, _ = _psd_eigh(s1_half @ s2 @ s1_half, scale=scale)
    return float(np.sqrt(w).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂); this is FID on Inception features."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DataError(
            f"statistics of different feature dimensions: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}; compute both with the same feature network"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise NumericalError(f"{name} contains NaN or Inf; the features it was computed from are not finite")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fd, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets [n, d] and [m, d]."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
