"""Exact GMM metrics, sliced Wasserstein and memorisation ratio against closed forms and brute force."""

import math

import numpy as np
import pytest
import torch

from diffspace.denoisers import GaussianMixture
from diffspace.errors import ConfigError, DataError
from diffspace.metrics.exact import component_weight_error, gmm_nll, memorization_ratio, sliced_wasserstein

F64 = torch.float64


def _gmm(separation: float, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = separation * torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)
    A = torch.randn(3, 2, 2, generator=g, dtype=F64) / 2
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, A @ A.transpose(1, 2) + 0.2 * torch.eye(2, dtype=F64))


def test_gmm_nll_matches_brute_force():
    gmm = _gmm(3.0)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    for sigma in (0.0, 0.7):
        covs = gmm.eigvecs @ torch.diag_embed(gmm.eigvals) @ gmm.eigvecs.transpose(1, 2)
        covs = covs + sigma**2 * torch.eye(2, dtype=F64)
        logp = torch.logsumexp(torch.stack([
            gmm.weights[k].log() + torch.distributions.MultivariateNormal(gmm.means[k], covs[k]).log_prob(x)
            for k in range(3)]), 0)
        assert gmm_nll(x, gmm, sigma=sigma, chunk=7) == pytest.approx(-float(logp.mean()), rel=1e-12)
        assert gmm_nll(x, gmm, sigma=sigma, unit="bpd") == pytest.approx(-float(logp.mean()) / (2 * math.log(2)))
    with pytest.raises(ConfigError):
        gmm_nll(x, gmm, unit="bits")


def test_component_weights_of_true_samples():
    # Hard assignment on well separated components (misassignment probability < 1e-20 at 40 std apart):
    # each frequency is binomial around π_k, so |f_k − π_k| < 4 standard errors.
    gmm = _gmm(40.0)
    n = 4000
    x = gmm.sample(n, torch.Generator().manual_seed(2))
    out = component_weight_error(x, gmm, chunk=999)
    assert (out["abs_error"] < 4 * out["std_error"]).all()
    assert out["total_variation"] == pytest.approx(0.5 * float(out["abs_error"].sum()))
    assert out["frequencies"].sum() == pytest.approx(1.0)
    # Soft assignment on overlapping components: E r_k(x) = π_k exactly, Var r_k ≤ π_k(1 − π_k).
    gmm = _gmm(1.0)
    out = component_weight_error(gmm.sample(n, torch.Generator().manual_seed(3)), gmm, soft=True)
    assert (out["abs_error"] < 4 * out["std_error"]).all()


def test_component_weights_detect_a_wrong_mixture():
    gmm = _gmm(40.0)
    x = gmm.means[:1] + 0.1 * torch.randn(100, 2, dtype=F64)  # everything in component 0
    out = component_weight_error(x, gmm)
    assert torch.equal(out["frequencies"], torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    assert out["total_variation"] == pytest.approx(0.5)  # ½(0.5 + 0.3 + 0.2)
    assert out["max_abs_error"] == pytest.approx(0.5)


def test_sliced_w2_of_uniform_samples_shrinks_like_one_over_n():
    # d = 1, x, y ~ U(0,1), n each: W2² = mean (X_(i) − Y_(i))², and Var X_(i) = i(n+1−i)/((n+1)²(n+2)), so
    # E W2² = 2 Σ_i Var X_(i) / n = 1/(3(n+1)) exactly: SW_2 ∝ n^(−1/2). Mean of 200 repeats within 4 SE.
    g = torch.Generator().manual_seed(4)
    for n in (20, 200):
        vals = torch.tensor([sliced_wasserstein(torch.rand(n, 1, generator=g, dtype=F64),
                                                torch.rand(n, 1, generator=g, dtype=F64), num_projections=1) ** 2
                             for _ in range(200)])
        assert abs(float(vals.mean()) - 1 / (3 * (n + 1))) < 4 * float(vals.std()) / math.sqrt(200)


@pytest.mark.parametrize("p", [1, 2])
def test_unequal_sizes_equal_replicated_samples(p):
    # The empirical measure of x (n points) equals that of x with every point repeated m times, so W_p with
    # sizes n ≠ m must equal the equal-size W_p of the replicated sets (n·m points each).
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64) + 0.5
    got = sliced_wasserstein(x, y, num_projections=50, p=p, generator=torch.Generator().manual_seed(0))
    want = sliced_wasserstein(x.repeat_interleave(4, 0), y.repeat_interleave(6, 0), num_projections=50, p=p,
                              generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(want, rel=1e-12)


def test_sliced_w2_of_a_shift():
    # y = x + Δ: every projection is shifted by θ·Δ, so W2² = (θ·Δ)² exactly. θ uniform on S^(d−1):
    # E (θ·Δ)² = ‖Δ‖²/d, Var = ‖Δ‖⁴ (2d − 2)/(d²(d + 2)); Monte Carlo over L directions within 4 SE.
    d, L = 4, 512
    delta = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=F64)
    se = float(delta.norm() ** 2) * math.sqrt((2 * d - 2) / (d**2 * (d + 2)) / L)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1000, d, generator=g, dtype=F64)
    sw2 = sliced_wasserstein(x, x + delta, num_projections=L, generator=g) ** 2
    assert abs(sw2 - 1.0) < 4 * se
    # Independent samples add the same-distribution term E W2² = O(log n / n) ≈ 1e-3 here (≪ 0.02).
    y = torch.randn(1500, d, generator=g, dtype=F64) + delta
    sw2 = sliced_wasserstein(x, y, num_projections=L, generator=g) ** 2
    assert abs(sw2 - 1.0) < 4 * se + 0.02
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_bad_input():
    with pytest.raises(DataError):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ConfigError):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), p=0.5)


def test_memorization_ratio_copies_and_fresh_samples():
    g = torch.Generator().manual_seed(7)
    d = 16
    train = torch.randn(2000, d, generator=g, dtype=F64)
    idx = torch.randperm(2000, generator=g)[:100]
    copies = memorization_ratio(train[idx], train.numpy(), chunk=300)  # numpy input, streamed in 7 chunks
    assert torch.equal(copies["nn_distance"], torch.zeros(100, dtype=F64))
    assert torch.equal(copies["nn_index"], idx)
    assert copies["fraction_below"] == 1.0 and copies["fraction_memorized"] == 1.0 and copies["mean"] == 0.0

    fresh = torch.randn(200, d, generator=g, dtype=F64)
    out = memorization_ratio(fresh, train, chunk=300)
    nn = torch.cdist(fresh, train).min(1).values
    assert torch.allclose(out["nn_distance"], nn, rtol=1e-12)
    assert out["median_distance"] == pytest.approx(float(torch.pdist(fresh).median()), rel=1e-12)
    # ‖x − y‖²/2 ~ χ²₁₆ for independent draws; the median pair distance is ≈ √(2·15.3) ≈ 5.5, so ratio < 1/3
    # needs ‖x − y‖²/2 < 1.7: P(χ²₁₆ < 1.7) ≈ 3e-6, times 2000 training points ≈ 0.7 % of samples; ratio < 0.4
    # has P(χ²₁₆ < 2.4) ≈ 4e-5, i.e. ≲ 8 % of samples, so the mean ratio stays well above 0.4.
    assert out["fraction_below"] <= 0.05
    assert out["mean"] > 0.4
    assert out["fraction_memorized"] <= 0.05


def test_memorization_ratio_bad_input():
    with pytest.raises(DataError):
        memorization_ratio(torch.zeros(4, 3), np.zeros((10, 2)))
    with pytest.raises(DataError):
        memorization_ratio(torch.zeros(4, 3), torch.randn(10, 3))  # identical samples: no spread
