"""Latent interpolation: a straight line between independent latents dips to √½ of their norm at the midpoint
(‖(z0 + z1)/2‖² = (‖z0‖² + ‖z1‖² + 2⟨z0, z1⟩)/4 ≈ d/2), while spherical and norm-preserving paths stay on the
shell of radius √d."""

import math

import pytest
import torch

from diffspace.denoisers import GaussianMixture
from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.geometry import interpolate, interpolation_samples, path_norms


def _pair(seed, d=1024):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)


def test_linear_midpoint_norm_is_sqrt_half_in_1024_dimensions():
    ts = torch.linspace(0, 1, 9)
    ratios = []
    for seed in range(64):
        z0, z1 = _pair(seed)
        norms = path_norms(interpolate(z0, z1, ts, "linear"))
        mean_end = 0.5 * (norms[0] + norms[-1])
        # Exact for every pair: ‖(z0 + z1)/2‖² = (‖z0‖² + ‖z1‖² + 2⟨z0, z1⟩)/4.
        exact = torch.sqrt(z0 @ z0 + z1 @ z1 + 2 * z0 @ z1) / 2
        torch.testing.assert_close(norms[4], exact, rtol=1e-12, atol=0)
        ratios.append(float(norms[4] / mean_end))
    # ⟨z0, z1⟩/d has standard deviation 1/√d ≈ 3%, so one pair's ratio scatters by ~1.5% around √½; the mean of 64
    # pairs by ~0.2%, and 1% is about five standard deviations.
    assert abs(sum(ratios) / len(ratios) / math.sqrt(0.5) - 1) < 0.01, sum(ratios) / len(ratios)
    assert max(abs(r / math.sqrt(0.5) - 1) for r in ratios) < 0.08


def test_spherical_and_norm_preserving_paths_keep_the_norm():
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    for seed in range(5):
        z0, z1 = _pair(seed)
        ends = (1 - ts) * z0.norm() + ts * z1.norm()
        for method in ("spherical", "norm"):
            path = interpolate(z0, z1, ts, method)
            torch.testing.assert_close(path[0], z0, rtol=0, atol=1e-12)
            torch.testing.assert_close(path[-1], z1, rtol=0, atol=1e-12)
            assert float((path_norms(path) / ends - 1).abs().max()) < 0.01, method
        torch.testing.assert_close(path_norms(interpolate(z0, z1, ts, "norm")), ends, rtol=1e-12, atol=0)
    # Equal-norm end points: slerp keeps the norm exactly.
    z0, z1 = _pair(9)
    z1 = z1 * (z0.norm() / z1.norm())
    norms = path_norms(interpolate(z0, z1, ts, "spherical"))
    torch.testing.assert_close(norms, torch.full_like(norms, float(z0.norm())), rtol=1e-12, atol=0)


def test_bad_interpolations_are_refused():
    with pytest.raises(ConfigError, match="shapes"):
        interpolate(torch.zeros(3, 4) + 1, torch.ones(12), [0.5])
    with pytest.raises(ConfigError, match="unknown interpolation"):
        interpolate(torch.ones(3), torch.ones(3), [0.5], "cubic")
    with pytest.raises(ConfigError, match="zero vector"):
        interpolate(torch.zeros(3), torch.ones(3), [0.5])


def test_interpolation_samples_run_the_sampler_on_each_path_point():
    g = torch.Generator().manual_seed(0)
    model = GaussianMixture(torch.ones(2), torch.randn(2, 4, generator=g, dtype=torch.float64),
                            torch.full((2, 4), 0.1, dtype=torch.float64))
    z0, z1 = torch.randn(4, generator=g), torch.randn(4, generator=g)
    sigmas = grids.edm(6)
    out = interpolation_samples("euler", model, z0, z1, sigmas, [0.0, 0.5, 1.0], "spherical")
    assert out.shape == (3, 4)
    from diffspace import samplers

    ends = samplers.euler(model, torch.stack([z0, z1]).to(torch.float64) * sigmas[0], sigmas)
    torch.testing.assert_close(out[[0, 2]], ends, rtol=0, atol=1e-12)
