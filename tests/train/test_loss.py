"""Losses of EDM's Table 1: noise distributions, weights, and the loss of the exact denoiser."""

import math

import pytest
import torch

from diffspace.design.precond import EDMPrecond
from diffspace.design.schedules import VPSchedule
from diffspace.errors import ConfigError
from diffspace.train.loss import EDMLoss, VELoss, VPLoss, build_loss

N = 200_000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_edm_log_sigma_is_normal():
    loss = EDMLoss(P_mean=-1.2, P_std=1.2)
    ln = loss.sample_sigma(N, _gen()).double().log()
    # Sample mean/std of N normals: standard errors P_std/sqrt(N) = 0.0027 and P_std/sqrt(2N) = 0.0019; 5 SE.
    assert abs(ln.mean() - (-1.2)) < 5 * 1.2 / math.sqrt(N)
    assert abs(ln.std() - 1.2) < 5 * 1.2 / math.sqrt(2 * N)


def test_ve_log_sigma_is_uniform():
    loss = VELoss(sigma_min=0.02, sigma_max=100)
    s = loss.sample_sigma(N, _gen()).double()
    assert s.min() >= 0.02 * (1 - 1e-6) and s.max() <= 100 * (1 + 1e-6)
    u = (s.log() - math.log(0.02)) / math.log(100 / 0.02)  # should be U(0, 1)
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N)
    assert abs((u < 0.25).double().mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / N)


def test_vp_sigma_is_schedule_of_uniform_t():
    loss = VPLoss()
    sched = VPSchedule(19.9, 0.1)
    s = loss.sample_sigma(N, _gen()).double()
    t = sched.sigma_inv(s)  # should be U(1e-5, 1)
    assert t.min() >= 1e-5 - 1e-6 and t.max() <= 1 + 1e-6
    assert abs(t.mean() - (1 + 1e-5) / 2) < 5 * math.sqrt(1 / 12 / N)
    # Table-1 range: σ(ε_t = 1e-5) = 0.0010005 ... σ(1) = 152.167 (spec §1.2 derived constants).
    assert s.min() > 0.00100 and s.max() < 152.2
    # The lower end is ε_t = 1e-5: P(t < 1e-3) = (1e-3 − 1e-5)/(1 − 1e-5) ≈ 9.9e-4, about 198 of N samples
    # (binomial SD 14; ±5 SD). With ε_t = 1e-3 there would be none.
    p = (1e-3 - 1e-5) / (1 - 1e-5)
    assert abs(int((t < 1e-3).sum()) - N * p) < 5 * math.sqrt(N * p * (1 - p))


def test_edm_weight_is_inverse_c_out_squared():
    sigma = torch.logspace(-3, 2, 50)
    loss = EDMLoss(sigma_data=0.7)
    _, c_out, _, _ = EDMPrecond(torch.nn.Identity(), sigma_data=0.7).coefficients(sigma)
    torch.testing.assert_close(loss.weight(sigma) * c_out**2, torch.ones_like(sigma), rtol=1e-5, atol=0)
    assert torch.equal(VPLoss().weight(sigma), 1 / sigma**2)
    assert torch.equal(VELoss().weight(sigma), 1 / sigma**2)


class _ExactGaussianD(torch.nn.Module):
    """Exact denoiser of y ~ N(0, s²I): D(x; σ) = s²/(s² + σ²)·x."""

    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x, sigma, class_labels=None, **kw):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.s**2 / (self.s**2 + sigma**2) * x


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_loss_of_exact_denoiser(name):
    # For y ~ N(0, s²), E[(D(y+σn; σ) − y)²] = s²σ²/(s² + σ²) per element. With λ = 1/σ² (VP, VE) the weighted
    # loss times (s² + σ²)/s² has mean 1; with EDM's λ and σ_data = s it is exactly 1 for every σ.
    s = 0.8
    loss = build_loss(name, **({"sigma_data": s} if name == "edm" else {}))
    y = s * torch.randn(4000, 8, generator=_gen(1))
    sigma, noise = loss.draw(y, _gen(2))
    assert sigma.shape == (4000,) and noise.shape == y.shape
    per = loss(_ExactGaussianD(s), y, sigma=sigma, noise=noise)  # [4000, 8]
    normed = per if name == "edm" else per * ((s**2 + sigma**2) / s**2)[:, None]
    # (D − y)²/E[(D − y)²] is χ²₁: variance 2 per element, 32000 elements -> SE 0.0079; 5 SE.
    assert abs(normed.double().mean() - 1) < 5 * math.sqrt(2 / per.numel())


def test_explicit_sigma_and_noise_match_generator_draw():
    loss = EDMLoss()
    y = torch.randn(16, 3)
    net = _ExactGaussianD(1.0)
    a = loss(net, y, generator=_gen(7))
    sigma, noise = loss.draw(y, _gen(7))
    b = loss(net, y, sigma=sigma, noise=noise)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError):
        loss(net, y, sigma=sigma)
    with pytest.raises(ConfigError):
        loss(net, y, sigma=sigma[:3], noise=noise)


def test_bad_names_and_parameters():
    with pytest.raises(ConfigError, match="iDDPM"):
        build_loss("iddpm")
    with pytest.raises(ConfigError):
        VELoss(sigma_min=1, sigma_max=0.5)
    with pytest.raises(ConfigError):
        EDMLoss(P_std=0)
