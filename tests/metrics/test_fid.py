"""Fréchet distance against closed forms, including non-commuting and singular covariances."""

import numpy as np
import pytest

from diffspace.errors import DataError, NumericalError
from diffspace.metrics.fid import feature_stats, fid_from_features, frechet_distance, sqrtm_psd


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_closed_form_non_commuting_d64():
    # Σ₁ = Q D Qᵀ and Σ₂ = Σ₁^{-½} M² Σ₁^{-½} with M = P E Pᵀ, so (Σ₁^½ Σ₂ Σ₁^½)^½ = M and
    # FD = |Δμ|² + tr Σ₁ + tr Σ₂ − 2 Σ E exactly; all factors are built from known eigen-decompositions.
    d, rng = 64, np.random.default_rng(0)
    Q, P = _orthogonal(d, rng), _orthogonal(d, rng)
    D, E = rng.uniform(0.2, 5.0, d), rng.uniform(0.1, 3.0, d)
    s1 = (Q * D) @ Q.T
    s1_inv_half = (Q / np.sqrt(D)) @ Q.T
    s2 = s1_inv_half @ (P * E**2) @ P.T @ s1_inv_half
    s2 = 0.5 * (s2 + s2.T)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert np.abs(s1 @ s2 - s2 @ s1).max() > 1.0  # genuinely non-commuting
    exact = np.sum((mu1 - mu2) ** 2) + D.sum() + np.trace(s2) - 2 * E.sum()
    # float64 eigen-decompositions of 64×64 matrices with entries O(10) are accurate to ~1e-12; 1e-6 is the spec.
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, abs=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(exact, abs=1e-6)  # symmetric


def test_agrees_with_general_sqrtm_when_well_conditioned():
    # EDM's formula tr sqrtm(Σ₁Σ₂) (scipy) and ours coincide for full-rank covariances.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((500, 32)), rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32)) / 4
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    root = scipy_linalg.sqrtm(s1 @ s2)
    edm = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(edm, rel=1e-9)


def test_diagonal_closed_form():
    # Commuting diagonal covariances: FD = |Δμ|² + Σ (σ₁ᵢ − σ₂ᵢ)².
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(5 + 1 + 0 + 4, abs=1e-12)


def test_singular_covariances_fewer_samples_than_dimensions():
    rng = np.random.default_rng(2)
    d, n = 64, 20  # rank-19 sample covariance
    mu, s = feature_stats(rng.standard_normal((n, d)) * rng.uniform(0.5, 2, d))
    tr = np.trace(s)
    # Identical statistics: exactly 0 (clipping removes round-off eigenvalues; 1e-9·tr Σ allows their residue).
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * tr
    # Scaled covariance (c Σ has root √c Σ^½): FD = (1 − √c)² tr Σ.
    assert frechet_distance(mu, s, mu, 4.0 * s) == pytest.approx((1 - 2) ** 2 * tr, rel=1e-9)
    # Covariances on orthogonal subspaces: the cross term vanishes, FD = tr Σ₁ + tr Σ₂.
    Q = _orthogonal(d, rng)
    a = rng.standard_normal((10, 30)) @ Q[:30]
    b = rng.standard_normal((10, 30)) @ Q[30:60]
    (ma, sa), (mb, sb) = feature_stats(a), feature_stats(b)
    expected = np.sum((ma - mb) ** 2) + np.trace(sa) + np.trace(sb)
    assert frechet_distance(ma, sa, mb, sb) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_psd_and_feature_stats():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6))
    mu, s = feature_stats(x)
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-14)
    np.testing.assert_allclose(s, np.cov(x, rowvar=False), atol=1e-13)  # divisor n − 1, as EDM
    r = sqrtm_psd(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-12)
    np.testing.assert_allclose(r, r.T, atol=0)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-10)


def test_bad_input():
    with pytest.raises(DataError, match="dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(NumericalError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([np.nan, 0]), np.eye(2))
    with pytest.raises(DataError, match="at least 2"):
        feature_stats(np.zeros((1, 5)))
