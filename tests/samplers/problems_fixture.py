"""Small exact problems shared by the sampler tests."""

import math

import torch

from diffspace import samplers
from diffspace.denoisers import GaussianMixture


def gmm(d_shape=(2,), K=3, seed=0, spread=1.5) -> GaussianMixture:
    """A well-conditioned mixture with full covariances (eigenvalues in [0.05, ~1]) and unequal weights."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(d_shape)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    covs = 0.5 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    means = spread * torch.randn(K, *d_shape, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.arange(1, K + 1, dtype=torch.float64), means, covs)


def slope(ns, errs) -> float:
    """Least-squares slope of log(err) against log(N)."""
    x = torch.tensor(ns, dtype=torch.float64).log()
    y = torch.tensor(errs, dtype=torch.float64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def run_scalar(name, z: float, sigmas, *, model, **options) -> float:
    """Sampler `name` from the single 1-D point z along the float64 grid `sigmas`; returns the endpoint."""
    x = torch.tensor([[z]], dtype=torch.float64)
    return float(samplers.get(name)(model, x, torch.tensor(sigmas, dtype=torch.float64), **options))


class FixedNoise:
    """A noise source that returns the given values in order (one scalar per draw)."""

    def __init__(self, *values):
        self.values = list(values)

    def randn_like(self, x):
        return torch.full_like(x, self.values.pop(0))
