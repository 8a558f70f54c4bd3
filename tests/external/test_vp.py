"""Discrete-time VP ε/v/x₀ networks as denoisers: with the exact network of Gaussian data the wrapper gives the
exact denoiser c²/(c² + σ²)·z at every σ of the table (nearest) and between them (interpolated); bad tables fail."""

from __future__ import annotations

import re

import pytest
import torch

from diffspace.errors import ConfigError
from diffspace.external import DiscreteVP, sigmas_from_alphas_cumprod

C = 0.7  # data y ~ N(0, C² I)


def _alphas_cumprod(M=1000):
    betas = torch.linspace(1e-4, 0.02, M, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class ExactVPModel:
    """The optimal ε/v/x₀ network of Gaussian data in VP coordinates X = sqrt(ᾱ)y + sqrt(1 − ᾱ)n, with ᾱ at
    (possibly fractional) timestep t from `alpha_of_t`. E[y | X] = C²·sqrt(ᾱ)/(ᾱC² + 1 − ᾱ)·X."""

    def __init__(self, prediction, alpha_of_t):
        self.prediction, self.alpha_of_t, self.seen_t = prediction, alpha_of_t, []

    def __call__(self, X, t):
        self.seen_t.append(t.clone())
        a = self.alpha_of_t(t).reshape(-1, 1)
        y0 = C**2 * a.sqrt() / (a * C**2 + 1 - a) * X
        eps = (X - a.sqrt() * y0) / (1 - a).sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * y0, "sample": y0}[self.prediction]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_exact_network_gives_exact_denoiser_on_the_table(prediction):
    ac = _alphas_cumprod()

    def table(t):
        assert torch.equal(t, t.round()), "a table level must map to an integer timestep"
        return ac[t.long()]

    model = ExactVPModel(prediction, table)
    D = DiscreteVP(model, ac, prediction=prediction, timestep="nearest", dtype=torch.float64)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    sigma = ((1 - ac[t]) / ac[t]).sqrt()
    z = torch.randn(6, 5, dtype=torch.float64) * (C**2 + sigma.reshape(-1, 1) ** 2).sqrt()
    got = D(z, sigma)
    torch.testing.assert_close(got, C**2 / (C**2 + sigma.reshape(-1, 1) ** 2) * z, rtol=1e-10, atol=1e-12)
    assert torch.equal(model.seen_t[-1], t.to(torch.float64))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_interpolated_timesteps_are_consistent_between_table_entries(prediction):
    """A network that is continuous in t (ᾱ(t) = 1/(1 + σ(t)²), σ(t) log-linear between entries) is exact at any
    σ in range: sigma_to_t and t_to_sigma are inverse maps and the coefficients use the σ passed."""
    ac = _alphas_cumprod()
    D = DiscreteVP(None, ac, prediction=prediction, dtype=torch.float64)
    D.model = ExactVPModel(prediction, lambda t: 1 / (1 + D.t_to_sigma(t) ** 2))
    sigma = torch.tensor([0.0101, 0.05, 0.5, 3.3, 80.0, 150.0], dtype=torch.float64)
    t = D.sigma_to_t(sigma)
    assert not torch.equal(t, t.round())  # genuinely between table entries
    torch.testing.assert_close(D.t_to_sigma(t), sigma, rtol=1e-12, atol=0)
    z = torch.randn(6, 5, dtype=torch.float64) * (C**2 + sigma.reshape(-1, 1) ** 2).sqrt()
    torch.testing.assert_close(D(z, sigma), C**2 / (C**2 + sigma.reshape(-1, 1) ** 2) * z, rtol=1e-10, atol=1e-12)


def test_range_and_round_sigma():
    ac = _alphas_cumprod()
    sig = sigmas_from_alphas_cumprod(ac)
    near = DiscreteVP(None, ac, timestep="nearest")
    interp = DiscreteVP(None, ac)
    assert near.sigma_min == sig[0].item() and near.sigma_max == sig[-1].item()
    s = torch.tensor([0.3, 5.0], dtype=torch.float64)
    snapped = near.round_sigma(s)
    assert all(bool((sig == v).any()) for v in snapped) and torch.allclose(snapped, s, rtol=0.02)
    assert torch.equal(interp.round_sigma(s), s)
    assert torch.equal(near.timesteps_to_sigmas([999, 500, 0]), torch.cat([sig[[999, 500, 0]], torch.zeros(1,
                                                                                  dtype=torch.float64)]))


@pytest.mark.parametrize("table, needle", [
    ([0.9, 0.95, 0.5], "not strictly decreasing"),
    ([0.9, 0.9, 0.5], "not strictly decreasing"),
    ([0.9, 0.5, 0.0], "must lie in (0, 1]"),
    ([1.5, 0.5, 0.1], "must lie in (0, 1]"),
    ([0.5], "at least 2"),
])
def test_bad_tables(table, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        DiscreteVP(None, torch.tensor(table))


def test_bad_options():
    with pytest.raises(ConfigError, match="prediction type 'x0'"):
        DiscreteVP(None, _alphas_cumprod(), prediction="x0")
    with pytest.raises(ConfigError, match="timestep mode"):
        DiscreteVP(None, _alphas_cumprod(), timestep="floor")
