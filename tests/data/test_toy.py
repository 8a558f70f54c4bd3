"""Toy 2-D datasets against their closed-form moments."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from diffspace.data import open_dataset
from diffspace.errors import ConfigError, DataError

N = 200_000


def check_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Sample mean within 5 standard errors sqrt(diag(cov)/n); sample covariance within 0.02 (its standard
    error is about sqrt(2)·var/sqrt(n) ≈ 0.003 here, so 0.02 allows heavy tails)."""
    x = x.to(torch.float64)
    se = (torch.diagonal(cov) / x.shape[0]).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all(), (x.mean(0), mean)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.02, rtol=0)


def test_gmm8_mixture_and_samples():
    ds = open_dataset("toy:gmm8")
    w, mu, cov = ds.mixture()
    assert w.dtype == mu.dtype == cov.dtype == torch.float64
    assert w.shape == (8,) and mu.shape == (8, 2) and cov.shape == (8, 2, 2)
    assert abs(w.sum().item() - 1) < 1e-12 and len(set(w.tolist())) == 8  # unequal weights
    # Separation: nearest means are >= 10 component stds apart.
    dist = torch.cdist(mu, mu) + torch.eye(8) * 1e9
    std = cov[:, 0, 0].sqrt().max()
    assert dist.min() / std >= 10
    g = torch.Generator().manual_seed(1)
    x = ds.sample(N, g, dtype=torch.float64)
    m = w @ mu
    second = sum(w[k] * (cov[k] + torch.outer(mu[k], mu[k])) for k in range(8))
    check_moments(x, m, second - torch.outer(m, m))
    # Component frequencies vs weights: binomial standard error sqrt(w(1-w)/n), 5 SE.
    k = torch.cdist(x, mu).argmin(1)
    freq = torch.bincount(k, minlength=8).double() / N
    assert ((freq - w).abs() < 5 * (w * (1 - w) / N).sqrt()).all(), (freq, w)
    # Conditional labels = components.
    lab = open_dataset("toy:gmm8", use_labels=True, max_size=1000)
    pts, onehot = lab.items(), lab.labels()
    assert lab.label_dim == 8 and onehot.shape == (1000, 8)
    nearest = torch.cdist(torch.as_tensor(pts, dtype=torch.float64), mu).argmin(1).numpy()
    np.testing.assert_array_equal(onehot.argmax(1), nearest)


def test_swissroll_moments_closed_form_vs_quadrature():
    ds = open_dataset("toy:swissroll")
    mean, cov = ds.moments()
    # Independent check of the closed form: integrate over t ~ U[1.5π, 4.5π].
    a, b, s, e = 1.5 * math.pi, 4.5 * math.pi, ds.scale, ds.noise
    E = lambda f: integrate.quad(f, a, b, limit=200)[0] / (b - a)
    mx, my = E(lambda t: t * math.cos(t)) / s, E(lambda t: t * math.sin(t)) / s
    cxx = E(lambda t: (t * math.cos(t)) ** 2) / s**2 - mx**2 + e**2
    cyy = E(lambda t: (t * math.sin(t)) ** 2) / s**2 - my**2 + e**2
    cxy = E(lambda t: t * t * math.cos(t) * math.sin(t)) / s**2 - mx * my
    torch.testing.assert_close(mean, torch.tensor([mx, my], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(cov, torch.tensor([[cxx, cxy], [cxy, cyy]], dtype=torch.float64), atol=1e-9, rtol=0)
    assert 0.8 < cov[0, 0] < 1.2 and 0.8 < cov[1, 1] < 1.2  # roughly unit scale
    check_moments(ds.sample(N, torch.Generator().manual_seed(2)), mean, cov)


def test_checkerboard_support_and_moments():
    ds = open_dataset("toy:checkerboard")
    x = ds.sample(N, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.abs().max() <= 2
    cells = torch.floor(x + 2).long()
    assert ((cells.sum(1) % 2) == 0).all()  # only dark cells
    assert torch.unique(cells[:, 0] * 4 + cells[:, 1]).numel() == 8
    mean, cov = ds.moments()
    torch.testing.assert_close(cov, torch.tensor([[4 / 3, 0.25], [0.25, 4 / 3]], dtype=torch.float64))
    check_moments(x, mean, cov)


def test_toy_protocol():
    a, b = open_dataset("toy:swissroll", max_size=500), open_dataset("toy:swissroll", max_size=500)
    assert len(a) == 500 and a.num_channels == 2 and a.resolution is None and not a.is_image
    np.testing.assert_array_equal(a.items(), b.items())  # fixed seed
    x, lab = a[3]
    assert x.dtype == np.float32 and x.shape == (2,) and lab.shape == (0,)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(a.sample(10, g1), b.sample(10, g2))
    assert a.to_float(a.items(0, 4)).dtype == torch.float32
    with pytest.raises(ConfigError, match="2-D point set"):
        open_dataset("toy:gmm8", resolution=32)
    with pytest.raises(ConfigError, match="unknown toy dataset 'toy:moons'"):
        open_dataset("toy:moons")
    with pytest.raises(DataError, match="has no class labels"):
        open_dataset("toy:checkerboard", use_labels=True)
