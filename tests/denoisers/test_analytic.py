"""Exact denoisers against brute-force formulas, limits and the mean-shift identity (spec §3.4–3.5)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from diffspace.denoisers import Empirical, Gaussian, GaussianMixture
from diffspace.errors import ConfigError


def _random_gmm(K, d, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    means = 2 * torch.randn(K, d, generator=g, dtype=torch.float64)
    if diagonal:
        return GaussianMixture(weights, means, torch.rand(K, d, generator=g, dtype=torch.float64) + 0.05)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return GaussianMixture(weights, means, A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64))


def _brute_gmm(gmm, x, sigma):
    """Σ_k w_k [μ_k + S_k(S_k+σ²I)⁻¹(x−μ_k)] with w from MultivariateNormal log-densities and linalg.solve."""
    K, d = gmm.means.shape
    covs = [gmm.eigvecs[k] @ torch.diag(gmm.eigvals[k]) @ gmm.eigvecs[k].T if gmm.eigvecs is not None
            else torch.diag(gmm.eigvals[k]) for k in range(K)]
    eye = torch.eye(d, dtype=torch.float64)
    logits = torch.stack([
        torch.distributions.MultivariateNormal(gmm.means[k], covs[k] + sigma**2 * eye).log_prob(x)
        + gmm.weights[k].log() for k in range(K)], 1)
    w = torch.softmax(logits, 1)
    parts = [gmm.means[k] + torch.linalg.solve(covs[k] + sigma**2 * eye, (x - gmm.means[k]).T).T @ covs[k]
             for k in range(K)]
    return sum(w[:, k : k + 1] * parts[k] for k in range(K))


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 30.0])
def test_gmm_matches_brute_force(diagonal, sigma):
    gmm = _random_gmm(3, 5, diagonal=diagonal)
    x = gmm.sample(16, torch.Generator().manual_seed(1)) + sigma * torch.randn(16, 5, dtype=torch.float64)
    assert torch.allclose(gmm(x, sigma), _brute_gmm(gmm, x, sigma), atol=1e-10, rtol=1e-10)


def test_gmm_image_shaped_and_limits():
    g = torch.Generator().manual_seed(0)
    K, shape = 3, (3, 4, 4)
    gmm = GaussianMixture(torch.ones(K), torch.randn(K, *shape, generator=g), torch.rand(K, 48, generator=g) + 0.1)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    assert gmm(x, 1.0).shape == x.shape
    # σ → ∞: D → data mean; σ → 0 with x a component mean: D → x.
    assert torch.allclose(gmm(x * 1e6, 1e8), gmm.mean().expand(5, *shape), atol=1e-6)
    mu = gmm.means[:1].reshape(1, *shape)
    assert torch.allclose(gmm(mu, 1e-6), mu, atol=1e-9)


def test_gaussian_is_linear_shrinkage():
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    g = Gaussian(mean, cov)
    x = torch.randn(7, 2, dtype=torch.float64)
    want = mean + (x - mean) @ torch.linalg.solve(cov + 0.3**2 * torch.eye(2, dtype=torch.float64), cov)
    assert torch.allclose(g(x, 0.3), want, atol=1e-12)


def test_tweedie_monte_carlo():
    # E[y | x] estimated by rejection-free importance weighting of prior samples agrees with D within MC error.
    gmm = _random_gmm(2, 2, seed=3)
    gen = torch.Generator().manual_seed(4)
    y = gmm.sample(400_000, gen)
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    sigma = 0.8
    w = torch.softmax(-((x - y) ** 2).sum(1) / (2 * sigma**2), 0)
    est = (w[:, None] * y).sum(0)
    ess = 1 / (w**2).sum()
    se = float(y.std(0).max()) / math.sqrt(float(ess))
    assert (est - gmm(x, sigma)[0]).abs().max() < 5 * se


def test_empirical_equals_bruteforce_softmax():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(300, 6, generator=g, dtype=torch.float64)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64) * 2
    for sigma in (0.05, 0.7, 20.0):
        w = torch.softmax(-((x[:, None] - data[None]) ** 2).sum(-1) / (2 * sigma**2), 1)
        for chunk in (7, 64, 1000):
            got = Empirical(data, chunk_size=chunk)(x, sigma)
            assert (got - w @ data).abs().max() < 1e-10


def test_empirical_is_mean_shift_and_kde_density():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(50, 3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    h = 0.4
    kernel = torch.exp(-((x[:, None] - data[None]) ** 2).sum(-1) / (2 * h**2))
    mean_shift = (kernel @ data) / kernel.sum(1, keepdim=True)
    emp = Empirical(data, chunk_size=16)
    assert torch.allclose(emp(x, h), mean_shift, atol=1e-12)
    kde = torch.log(kernel.mean(1)) - 1.5 * math.log(2 * math.pi * h**2)
    assert torch.allclose(emp.log_prob(x, h), kde, atol=1e-10)


def test_empirical_small_sigma_on_28x28_is_stable():
    # σ = 1e-3 on 28×28 data: logits ~ −‖x−y‖²/2e-6 ≈ −1e8; a naive softmax underflows, streaming must not.
    g = torch.Generator().manual_seed(2)
    data = torch.rand(2000, 1, 28, 28, generator=g) * 2 - 1
    x = data[:5].double() + 1e-3 * torch.randn(5, 1, 28, 28, generator=g, dtype=torch.float64)
    out = Empirical(data, chunk_size=256)(x, 1e-3)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, data[:5].double(), atol=1e-12)  # nearest point wins with weight ≈ 1


def test_empirical_accepts_numpy_memmap(tmp_path):
    import numpy as np

    arr = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=(100, 4))
    arr[:] = np.random.default_rng(0).standard_normal((100, 4))
    x = torch.zeros(2, 4, dtype=torch.float64)
    want = Empirical(torch.from_numpy(np.array(arr)))(x, 1.0)
    assert torch.allclose(Empirical(arr, chunk_size=9)(x, 1.0), want, atol=1e-12)


def test_empirical_is_batch_invariant_and_returns_the_inputs_dtype():
    # Fixed-size padded blocks: each query's result is bit-identical whatever batch (size, order) it is in.
    g = torch.Generator().manual_seed(3)
    data = torch.randn(500, 5, generator=g)  # float32 data
    x = torch.randn(37, 5, generator=g, dtype=torch.float64)
    emp = Empirical(data, chunk_size=128, block=16)
    full = emp(x, 0.4)
    for i in (0, 17, 36):
        assert torch.equal(emp(x[i : i + 1], 0.4)[0], full[i])
    perm = torch.randperm(37, generator=g)
    assert torch.equal(emp(x[perm], 0.4), full[perm])
    out32 = emp(x.float(), 0.4)
    assert out32.dtype == torch.float32 and (out32.double() - emp(x.float().double(), 0.4)).abs().max() < 1e-6
    # Per-sample σ (a batch of different levels) against brute force.
    sig = torch.linspace(0.1, 2.0, 37, dtype=torch.float64)
    w = torch.softmax(-((x[:, None] - data.double()[None]) ** 2).sum(-1) / (2 * sig[:, None] ** 2), 1)
    assert (emp(x, sig) - w @ data.double()).abs().max() < 1e-10


def test_bad_values_in_exact_denoisers_are_config_errors():
    data = torch.randn(20, 3)
    data[7, 1] = float("nan")
    with pytest.raises(ConfigError, match="data row 7 contains NaN"):
        Empirical(data, chunk_size=4)
    with pytest.raises(ConfigError, match="weights contain inf"):
        GaussianMixture([1.0, float("inf")], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(ConfigError, match="means contain nan"):
        GaussianMixture([1.0, 1.0], [[0.0], [float("nan")]], [[1.0], [1.0]])
    with pytest.raises(ConfigError, match="covs contain nan"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, float("nan")], [0.0, 1.0]]])


def test_shape_mismatch_is_a_config_error():
    gmm = _random_gmm(2, 3)
    with pytest.raises(ConfigError, match=r"expects \[batch, 3\]"):
        gmm(torch.zeros(4, 2), 1.0)


_MEMORY_PROBE = r"""
import json, resource, sys, torch
from diffspace.denoisers import Empirical
torch.set_num_threads(1)
n = int(sys.argv[1])
data = torch.empty(n, 784).uniform_(-1, 1)            # the dataset itself: n·784·4 bytes
Empirical(data[:8], chunk_size=4)(torch.zeros(1, 784, dtype=torch.float64), 0.5)  # load the GEMM code first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.zeros(16, 784, dtype=torch.float64)
Empirical(data, chunk_size=1024)(x, 0.5)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_kib": peak - base}))
"""


def test_empirical_memory_independent_of_dataset_size():
    # Extra peak memory of one call on 30 000 vs 60 000 × 784 data; the data themselves take 94 vs 188 MB.
    extra = {}
    for n in (30_000, 60_000):
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(n)], capture_output=True, text=True,
                             check=True)
        extra[n] = json.loads(out.stdout)["extra_kib"]
    # Working memory is O(B·chunk + B·d) ≈ 1 MB per chunk buffer; a dataset-sized copy would add ≥ 94 MB.
    assert extra[60_000] - extra[30_000] < 16 * 1024, extra
    assert extra[60_000] < 48 * 1024, extra
