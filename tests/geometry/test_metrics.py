"""Deviation, tangent cosine and PCA on curves whose values are known in closed form (a straight line, a circular
arc, a helix), embedded in 50 dimensions by a random orthogonal map (the metrics are rotation invariant)."""

import math

import pytest
import torch

from diffspace.errors import ConfigError, NumericalError
from diffspace.geometry import deviation, distance_to_final, explained_variance, principal_plane, tangent_cosine

D = 50


def _embed(points: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[n, k] -> [n, D] through k orthonormal columns of a random rotation, plus a random offset."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    return points @ q[:, : points.shape[1]].T + torch.randn(D, generator=g, dtype=torch.float64)


def _arc(n=21, R=2.0, theta=2.0):
    """Points at angles φ_j symmetric about the y axis: (R sin φ, R cos φ), φ from −θ/2 to θ/2."""
    phi = torch.linspace(-theta / 2, theta / 2, n, dtype=torch.float64)
    return phi, torch.stack([R * torch.sin(phi), R * torch.cos(phi)], 1)


def _helix(n=41, R=1.5, c=0.4, T=5.0):
    t = torch.linspace(-T, T, n, dtype=torch.float64)
    return t, torch.stack([R * torch.cos(t), R * torch.sin(t), c * t], 1)


def test_straight_line_has_zero_deviation_unit_cosine_and_one_component():
    s = torch.linspace(0, 1, 15, dtype=torch.float64) ** 2  # uneven spacing along the line
    line = _embed(torch.stack([3 * s, -2 * s], 1))
    assert deviation(line).abs().max() < 1e-10
    assert abs(float(explained_variance(line, 2)[0]) - 1) < 1e-10
    # Denoiser outputs on the line past the end point: d = (x − D)/σ is parallel to x − x_end.
    den = line[:-1] - (line[:-1] - line[-1]) * 1.3
    torch.testing.assert_close(tangent_cosine(line, den), torch.ones(14, dtype=torch.float64), rtol=0, atol=1e-10)


def test_circular_arc_deviation_cosine_and_pca_match_closed_forms():
    R, theta = 2.0, 2.0
    phi, pts = _arc(R=R, theta=theta)
    arc = _embed(pts, seed=1)
    # Distance to the chord: R cos φ − R cos(θ/2).
    torch.testing.assert_close(deviation(arc), R * torch.cos(phi) - R * math.cos(theta / 2), rtol=0, atol=1e-10)
    # Tangent-chord angle: the angle between the tangent at P and the chord to the end Q is half the arc PQ.
    tangent = torch.stack([torch.cos(phi), -torch.sin(phi)], 1)  # d/dφ of (sin φ, cos φ): towards the end
    den = _embed(pts + tangent, seed=1)[:-1]  # D ahead along the tangent, so x − D = −tangent
    expected = torch.cos((theta / 2 - phi[:-1]) / 2)
    torch.testing.assert_close(tangent_cosine(arc, den), expected, rtol=0, atol=1e-10)
    # PCA: coordinates are uncorrelated by symmetry, so the variances are those of R sin φ and R cos φ.
    vx, vy = (R * torch.sin(phi)).var(), (R * torch.cos(phi)).var()
    frac = explained_variance(arc, 3)
    torch.testing.assert_close(frac, torch.tensor([max(vx, vy) / (vx + vy), 1.0, 1.0], dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_helix_deviation_and_pca_match_closed_forms():
    R, c, T = 1.5, 0.4, 5.0
    t, pts = _helix(R=R, c=c, T=T)
    helix = _embed(pts, seed=2)
    # Chord from t = −T to t = T has direction (0, sin T, cT)·const; x stays orthogonal to it.
    cross = R * (math.sin(T) - torch.sin(t)) * c * T - c * (T - t) * R * math.sin(T)
    dev = torch.sqrt((R * math.cos(T) - R * torch.cos(t)) ** 2 + cross**2 / (R**2 * math.sin(T) ** 2 + c**2 * T**2))
    torch.testing.assert_close(deviation(helix), dev, rtol=0, atol=1e-10)
    # Covariance: x is uncorrelated with y and z (odd symmetry); (y, z) form a 2x2 block.
    x, y, z = pts.T
    cov = lambda a, b: ((a - a.mean()) * (b - b.mean())).mean()  # noqa: E731
    a, b, d = cov(y, y), cov(y, z), cov(z, z)
    root = math.sqrt(((a - d) / 2) ** 2 + b**2)
    eig = sorted([float(cov(x, x)), float((a + d) / 2 + root), float((a + d) / 2 - root)], reverse=True)
    total = sum(eig)
    expected = torch.tensor([eig[0] / total, (eig[0] + eig[1]) / total, 1.0], dtype=torch.float64)
    torch.testing.assert_close(explained_variance(helix, 3), expected, rtol=0, atol=1e-10)


def test_batched_inputs_give_per_trajectory_columns():
    _, arc = _arc()
    _, hel = _helix(n=21)
    batch = torch.stack([_embed(arc, 3), _embed(hel, 4)], 1)  # [steps, 2, D]
    dev = deviation(batch)
    assert dev.shape == (21, 2)
    torch.testing.assert_close(dev[:, 1], deviation(_embed(hel, 4)), rtol=0, atol=1e-12)
    assert explained_variance(batch, 2).shape == (2, 2)
    assert principal_plane(batch).shape == (21, 2, 2)
    assert distance_to_final(batch).shape == (21, 2)
    # A single trajectory of images is read as one trajectory when asked.
    img = batch[:, 0].reshape(21, 2, 5, 5)
    torch.testing.assert_close(deviation(img, batched=False), dev[:, 0], rtol=0, atol=1e-12)


def test_principal_plane_keeps_distances_of_a_planar_curve():
    _, arc = _arc()
    plane = principal_plane(_embed(arc, 5))
    d_plane = torch.cdist(plane, plane)
    torch.testing.assert_close(d_plane, torch.cdist(arc, arc), rtol=0, atol=1e-10)


def test_degenerate_trajectories_are_refused():
    with pytest.raises(ConfigError, match="at least 2"):
        deviation(torch.zeros(1, 3, 4))
    with pytest.raises(ConfigError, match="shape"):
        deviation(torch.zeros(5))
    with pytest.raises(NumericalError, match="ends where it starts"):
        deviation(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(NumericalError, match="zero variance"):
        explained_variance(torch.ones(4, 3))
    with pytest.raises(ConfigError, match="rows"):
        tangent_cosine(torch.zeros(5, 2, 3), torch.zeros(5, 2, 3))
