"""Optimal sampling on scikit-learn digits: Euler with the optimal denoiser is annealed mean shift, it never lowers
the KDE likelihood at the step's bandwidth, it ends on training images, and its denoising trajectory is closer to
the final sample than its sampling trajectory."""

import math

import pytest
import torch

from diffspace import samplers
from diffspace.data import open_dataset
from diffspace.denoisers import Empirical
from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.geometry import (
    distance_to_final,
    explained_variance,
    kde_log_prob,
    kernel_mean,
    mean_shift,
    mean_shift_view,
    memorization,
    record,
)


@pytest.fixture(scope="module")
def digits():
    ds = open_dataset("digits")
    return ds.to_float(ds.images_uint8(0, len(ds))).to(torch.float64)  # [1797, 1, 8, 8] in [-1, 1]


@pytest.fixture(scope="module")
def euler256(digits):
    """Euler with the optimal denoiser, 18 steps (EDM grid, 80 → 0.002 → 0), 256 seeds."""
    sigmas = grids.edm(18)
    x = samplers.StackedRandom(range(256)).randn([1, 8, 8], dtype=torch.float64) * sigmas[0]
    return record("euler", Empirical(digits), x, sigmas)


def test_euler_with_the_optimal_denoiser_is_annealed_mean_shift(digits, euler256):
    sigmas = grids.edm(18)
    x0 = euler256.x[0, :32]
    path = mean_shift(digits, x0, sigmas, return_path=True)
    assert path.shape == (19, 32, 1, 8, 8)
    assert float((path - euler256.x[:, :32]).abs().max()) < 1e-12
    torch.testing.assert_close(mean_shift(digits, x0, sigmas), path[-1], rtol=0, atol=0)


def test_kernel_mean_is_the_optimal_denoiser(digits):
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    D = Empirical(digits)
    for h in (0.05, 0.7, 3.0, 40.0):
        torch.testing.assert_close(kernel_mean(digits, x * h, h), D(x * h, h), rtol=0, atol=1e-12)
        torch.testing.assert_close(kde_log_prob(digits, x * h, h), D.log_prob(x * h, h), rtol=1e-12, atol=1e-9)


def test_mean_shift_view_of_euler_is_the_denoiser_output(digits):
    sigmas = grids.edm(10)
    x = samplers.StackedRandom(range(8)).randn([1, 8, 8], dtype=torch.float64) * sigmas[0]
    t = record("euler", Empirical(digits), x, sigmas)
    lam, targets = mean_shift_view(t.x, t.sigmas, t.sigma_hat)
    torch.testing.assert_close(lam, 1 - t.sigmas[1:] / t.sigmas[:-1])
    assert float((targets - t.denoised).abs().max()) < 1e-9
    heun = record("heun", Empirical(digits), x, sigmas)  # second order: the implied target is not D
    _, heun_targets = mean_shift_view(heun.x, heun.sigmas, heun.sigma_hat)
    assert float((heun_targets[:-1] - heun.denoised[:-1]).abs().max()) > 1e-3


def _random_steps(data: torch.Tensor, n: int, seed: int):
    """n random (x, σ, σ') around the data: a training point plus noise of a random level, σ' uniform in (0, σ)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (n,), generator=g)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.02), math.log(80), generator=g))
    scale = torch.empty(n, dtype=torch.float64).uniform_(0.3, 2.0, generator=g)  # off the typical shell too
    x = data[idx] + (sigma * scale)[:, None, None, None] * torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=g)
    ratio = torch.rand(n, dtype=torch.float64, generator=g)
    return x, sigma, sigma * ratio


def _likelihood_changes(D, x, sigma, sigma_next):
    """log p_σ(x') − log p_σ(x) for the Euler step x' = x + (1 − σ'/σ)(D(x; σ) − x), one σ per row."""
    lam = (1 - sigma_next / sigma)[:, None, None, None]
    step = x + lam * (D(x, sigma) - x)
    return D.log_prob(step, sigma) - D.log_prob(x, sigma)


def test_optimal_euler_steps_never_lower_the_kde_likelihood(digits):
    D = Empirical(digits)
    x, sigma, sigma_next = _random_steps(digits, 1200, seed=0)
    delta = _likelihood_changes(D, x, sigma, sigma_next)
    # Jensen: Δ ≥ (1 − (1 − λ)²)‖x − m‖²/(2σ²) ≥ 0; allow float64 rounding of log p (|log p| ≲ 1e4).
    assert float(delta.min()) > -1e-9, float(delta.min())
    assert (delta > 0).float().mean() > 0.99

    class Wrong:
        """A wrong denoiser: the optimal output reflected through x (steps move away from the kernel mean)."""

        def __call__(self, xi, h):
            return 2 * xi - D(xi, h)  # noqa: B023

        def log_prob(self, xi, h):
            return D.log_prob(xi, h)

    wrong = _likelihood_changes(Wrong(), x[:200], sigma[:200], sigma_next[:200])
    assert float(wrong.min()) < -1.0  # the same check fails for it


def test_optimal_sampling_memorises_training_images(digits, euler256):
    mem = memorization(euler256.final, digits, threshold=1e-3)
    assert mem["memorized"] >= 0.99, mem["memorized"]
    assert len(mem["relative"]) == 256
    # A sample halfway between two training images is not memorised.
    mid = 0.5 * (digits[:4] + digits[4:8])
    assert memorization(mid, digits, scale=mem["scale"])["memorized"] == 0.0


def test_denoising_trajectory_is_closer_to_the_sample_after_the_first_step(euler256):
    final = euler256.final
    dist_x = distance_to_final(euler256.x, final)          # [19, 256]
    dist_d = distance_to_final(euler256.denoised, final)   # [18, 256]
    assert bool((dist_d[1:] < dist_x[1:-1]).all())
    top2 = explained_variance(euler256.x, 2)[:, 1]
    assert float(top2.min()) > 0.99  # the prediction "close to 1", on every seed


def test_mean_shift_rejects_bad_bandwidths(digits):
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ConfigError, match="decrease"):
        mean_shift(digits, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ConfigError, match="at least two"):
        mean_shift(digits, x, torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="do not match"):
        mean_shift(digits, torch.zeros(2, 10, dtype=torch.float64), grids.edm(4))
