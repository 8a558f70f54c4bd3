"""PF-ODE likelihood against closed forms: Gaussian and Gaussian-mixture data, where log p(x; σ) is known."""

import math

import pytest
import torch

from diffspace.denoisers import Gaussian, GaussianMixture
from diffspace.errors import ConfigError, NumericalError
from diffspace.metrics.likelihood import bits_per_dim, dopri5, gaussian_log_prob, ode_nll
from diffspace.samplers.noise import StackedRandom

F64 = torch.float64
SMIN, SMAX = 0.002, 80.0


class RotatedGaussian:
    """Exact denoiser of N(μ, S), S = Q diag(λ) Qᵀ non-isotropic and rotated (so ∂D/∂x is not diagonal), built
    as D(x) = Q D_λ(Qᵀx) from diffspace's diagonal `Gaussian` (vectorised, hence fast under autograd; the
    full-covariance path is exercised in test_full_covariance_denoisers)."""

    def __init__(self, d: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        self.lam = torch.logspace(math.log10(0.05), math.log10(2.0), d, dtype=F64)  # eigenvalues 0.05 … 2
        self.mean = 0.5 * torch.randn(d, generator=g, dtype=F64)
        self.diag = Gaussian(self.mean @ self.Q, self.lam)
        self.cov = self.Q @ torch.diag(self.lam) @ self.Q.T
        self.dim = d

    def __call__(self, x, sigma):
        return self.diag(x @ self.Q, sigma) @ self.Q.T

    def log_prob(self, x, sigma):
        return self.diag.log_prob(x @ self.Q, sigma)  # |det Q| = 1

    def points(self, n: int, seed: int) -> torch.Tensor:
        """Draws of p(x; σ_min) = N(μ, S + σ_min² I)."""
        g = torch.Generator().manual_seed(seed)
        return (self.diag.sample(n, g) + SMIN * torch.randn(n, self.dim, generator=g, dtype=F64)) @ self.Q.T

    def nll(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Analytic −log N(x; μ, S + σ² I) by torch.distributions (independent of the denoiser code)."""
        cov = self.cov + sigma**2 * torch.eye(self.dim, dtype=F64)
        return -torch.distributions.MultivariateNormal(self.mean, cov).log_prob(x)


@pytest.mark.parametrize("d,n", [(2, 16), (8, 8)])
def test_exact_divergence_with_exact_prior(d, n):
    # With the true p(·; σ_max) as prior the only error is the solver's: local error control at 1e-7 gives a
    # global error in the accumulated log-determinant (≈ d·ln(σ_max/σ_min) ≈ 10·d nats) of order 1e-6.
    G = RotatedGaussian(d)
    x = G.points(n, seed=1)
    nll = ode_nll(G, x, SMIN, SMAX, prior=lambda z: G.log_prob(z, SMAX), rtol=1e-7, atol=1e-7)
    want = G.nll(x, SMIN)
    assert (nll - want).abs().max() < 1e-5
    assert ((nll - want) / want).abs().max() < 1e-5


@pytest.mark.parametrize("d,n", [(2, 32), (8, 16)])
def test_default_prior_within_one_percent(d, n):
    # Acceptance: default prior N(0, σ_max² I), default tolerances. The ODE part is exact, so per point the
    # error is the prior mismatch log p(x_T; σ_max) − log N(x_T; 0, σ_max² I), x_T = μ + sqrt((S+σ_max²)/
    # (S+σ_min²))(x − μ) in closed form: of order |μ|·|z|/σ_max per dimension, nearly cancelling on average,
    # so the mean NLL agrees within 1 %.
    G = RotatedGaussian(d)
    x = G.points(n, seed=2)
    stats = {}
    nll = ode_nll(G, x, stats=stats)
    want = G.nll(x, SMIN)
    assert abs(float(nll.mean() - want.mean())) < 0.01 * abs(float(want.mean()))
    ratio = ((G.lam + SMAX**2) / (G.lam + SMIN**2)).sqrt()
    x_T = G.mean + (((x - G.mean) @ G.Q) * ratio) @ G.Q.T
    mismatch = G.log_prob(x_T, SMAX) - gaussian_log_prob(x_T, SMAX)
    assert torch.allclose(nll - want, mismatch, atol=1e-3)  # solver error at rtol = atol = 1e-5
    assert torch.allclose(stats["prior_logp"], gaussian_log_prob(x_T, SMAX), rtol=1e-4)


def test_full_covariance_denoisers():
    # Autograd through diffspace's full-covariance Gaussian and a non-linear Gaussian-mixture D. For a
    # mixture log p(x; σ) is closed form at every σ, so with the true p(·; σ_max) as prior the ODE NLL must
    # equal −log p(x; σ_min) up to solver error (rtol = atol = 1e-6: ≲ 1e-4 nats).
    Gr = RotatedGaussian(3, seed=10)
    G = Gaussian(Gr.mean, Gr.cov)
    x = Gr.points(4, seed=11)
    nll = ode_nll(G, x, prior=lambda z: G.log_prob(z, SMAX), rtol=1e-6, atol=1e-6)
    assert (nll - Gr.nll(x, SMIN)).abs().max() < 1e-4
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 2, 2, generator=g, dtype=F64) / 2
    gmm = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), 2 * torch.randn(3, 2, generator=g, dtype=F64),
                          A @ A.transpose(1, 2) + 0.05 * torch.eye(2, dtype=F64))
    x = gmm.sample(6, g) + SMIN * torch.randn(6, 2, generator=g, dtype=F64)
    nll = ode_nll(gmm, x, prior=lambda z: gmm.log_prob(z, SMAX), rtol=1e-6, atol=1e-6)
    assert (nll + gmm.log_prob(x, SMIN)).abs().max() < 1e-4


def test_image_shaped_diagonal_gaussian():
    # [B, 3, 4, 4] data, diagonal S: exact trace over d = 48 matches −log N(x; μ, S + σ_min² I); Rademacher
    # Hutchinson has variance 2 Σ_{i≠j} M_ij² = 0 for a diagonal Jacobian, so it is exact too.
    g = torch.Generator().manual_seed(12)
    mean, var = torch.randn(3, 4, 4, generator=g, dtype=F64), 0.05 + torch.rand(48, generator=g, dtype=F64)
    G = Gaussian(mean, var)
    x = G.sample(4, g) + SMIN * torch.randn(4, 3, 4, 4, generator=g, dtype=F64)
    want = -torch.distributions.Normal(mean.flatten(), (var + SMIN**2).sqrt()).log_prob(x.flatten(1)).sum(1)
    prior = lambda z: G.log_prob(z, SMAX)
    exact = ode_nll(G, x, prior=prior, rtol=1e-6, atol=1e-6)
    hutch = ode_nll(G, x, prior=prior, rtol=1e-6, atol=1e-6, method="hutchinson",
                    generator=torch.Generator().manual_seed(0))
    assert (exact - want).abs().max() < 1e-4
    assert (hutch - want).abs().max() < 1e-4


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_known_variance(probe):
    # For Gaussian data ∂D/∂x = Q diag(λ/(λ+σ²)) Qᵀ does not depend on x, so with probes fixed along the path
    # the estimate is exact + (tr M − εᵀMε) averaged over P probes, M = ∫ ∂D/∂x d ln σ = Q diag(m) Qᵀ with
    # m = ln(σ_max/σ_min) − ½ ln((λ+σ_max²)/(λ+σ_min²)). Var εᵀMε = 2 Σ_{i≠j} M_ij² (Rademacher) or 2‖M‖_F²
    # (Gaussian). Mean error within 4 SE. Sample variance / prediction has sd ≈ sqrt((2 + κ)/n), excess kurtosis
    # κ = 12 Σm⁴/(P(Σm²)²) ≈ 1.6 for Gaussian probes (less for Rademacher): ≈ 0.19 at n = 96; accept [0.4, 1.7].
    d, n, P = 4, 96, 2
    G = RotatedGaussian(d, seed=4)
    x = G.points(n, seed=5)
    exact = ode_nll(G, x, prior=lambda z: G.log_prob(z, SMAX))
    est = ode_nll(G, x, prior=lambda z: G.log_prob(z, SMAX), method="hutchinson", num_probes=P, probe=probe,
                  generator=torch.Generator().manual_seed(6))
    m = math.log(SMAX / SMIN) - 0.5 * torch.log((G.lam + SMAX**2) / (G.lam + SMIN**2))
    M = G.Q @ torch.diag(m) @ G.Q.T
    var = 2 * float((M**2).sum() - ((M.diagonal() ** 2).sum() if probe == "rademacher" else 0)) / P
    err = est - exact
    assert abs(float(err.mean())) < 4 * math.sqrt(var / n)
    assert 0.4 < float(err.var()) / var < 1.7


def test_hutchinson_probes_follow_seeds():
    # Per-sample generators: a sample's probes (hence its estimate) depend on its seed, not on the batch.
    G = RotatedGaussian(3, seed=7)
    x = G.points(6, seed=8)
    kw = dict(method="hutchinson", rtol=1e-7, atol=1e-7)
    full = ode_nll(G, x, generator=StackedRandom(range(6)), **kw)
    part = ode_nll(G, x[2:4], generator=StackedRandom([2, 3]), **kw)
    assert torch.allclose(full[2:4], part, atol=1e-5)  # different shared step sizes: solver-tolerance level


def test_dopri5_on_a_known_solution():
    # dy/du = −y·cos u in both directions: y(u) = y0·exp(−sin u + sin u0).
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    for u0, u1 in ((0.0, 3.0), (2.0, -1.0)):
        stats = {}
        y = dopri5(lambda u, y: -y * math.cos(u), y0, u0, u1, rtol=1e-10, atol=1e-10, stats=stats)
        assert torch.allclose(y, y0 * math.exp(-math.sin(u1) + math.sin(u0)), rtol=1e-8)
        assert stats["nfe"] == 1 + 6 * (stats["steps"] + stats["rejected"])
    with pytest.raises(NumericalError):
        dopri5(lambda u, y: y, y0, 0.0, 10.0, rtol=1e-12, atol=1e-12, max_steps=3)


def test_bits_per_dim_conventions():
    # x = pixel/scale + shift: p_pixel = p_x / scale^d, so the offset is log2(scale) bits per dimension.
    assert bits_per_dim(0.0, 10, scale=256) == pytest.approx(8.0)
    assert bits_per_dim(0.0, 10, scale=128) == pytest.approx(7.0)
    assert bits_per_dim(10 * math.log(2), 10) == pytest.approx(1.0)
    nll = torch.tensor([3.0, 5.0])
    assert torch.allclose(bits_per_dim(nll, 3, scale=127.5), nll / (3 * math.log(2)) + math.log2(127.5))


def test_bad_input_and_non_differentiable_denoiser():
    G = RotatedGaussian(2)
    x = G.points(2, seed=9)
    with pytest.raises(ConfigError):
        ode_nll(G, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ConfigError):
        ode_nll(G, x, method="skilling")

    def frozen(x, sigma):
        with torch.no_grad():
            return G(x, sigma)

    with pytest.raises(ConfigError, match="no_grad"):
        ode_nll(frozen, x)
