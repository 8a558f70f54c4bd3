"""DEIS-tAB: the VP time map, the integration weights against an independent quadrature, a hand-derived step,
convergence order."""

import functools
import math

import pytest
import torch

from diffspace.denoisers import Gaussian
from diffspace.samplers import converge, problems
from diffspace.samplers.deis import BETA_D, BETA_MIN, tab_coefficients, vp_time

from .problems_fixture import run_scalar

integrate = pytest.importorskip("scipy.integrate")

M, V = -0.4, 0.5
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
run = functools.partial(run_scalar, model=G)


def d(z: float, s: float) -> float:
    return (z - (M + V / (V + s * s) * (z - M))) / s


def sigma_of(tau: float) -> float:
    return math.sqrt(math.expm1(0.5 * BETA_D * tau * tau + BETA_MIN * tau))


def test_vp_time_is_the_inverse_of_the_fitted_schedule():
    assert abs(float(vp_time(torch.tensor(80.0, dtype=torch.float64))) - 1.0) < 1e-12
    assert abs(float(vp_time(torch.tensor(0.002, dtype=torch.float64))) - 1e-3) < 1e-12
    for s in (0.01, 0.5, 3.0, 40.0):
        assert abs(sigma_of(float(vp_time(torch.tensor(s, dtype=torch.float64)))) - s) < 1e-12 * max(1, s)


def _quad(nodes, nxt, j):
    """∫ (dσ/dτ) L_j(τ) dτ over [τ(σ), τ(σ')] — the form DEIS writes — with scipy's adaptive quadrature."""
    taus = [float(vp_time(torch.tensor(s, dtype=torch.float64))) for s in nodes]
    t0, t1 = taus[0], float(vp_time(torch.tensor(nxt, dtype=torch.float64)))

    def f(tau):
        dsig = (BETA_D * tau + BETA_MIN) * math.exp(0.5 * BETA_D * tau * tau + BETA_MIN * tau) / (2 * sigma_of(tau))
        basis = math.prod((tau - tk) / (taus[j] - tk) for k, tk in enumerate(taus) if k != j)
        return dsig * basis

    return integrate.quad(f, t0, t1, epsabs=1e-13, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize("nodes,nxt", [([20.0, 45.0, 80.0], 8.0), ([0.9, 1.6, 3.0, 5.5], 0.4),
                                       ([0.02, 0.05, 0.1], 0.002)])
def test_weights_match_an_independent_quadrature(nodes, nxt):
    ours = tab_coefficients(nodes, nxt)
    for j, c in enumerate(ours):
        assert abs(c - _quad(nodes, nxt, j)) < 1e-10 * max(1.0, abs(c))
    assert abs(sum(ours) - (nxt - nodes[0])) < 1e-12 * nodes[-1]  # constants: ∫ dσ = σ' − σ


def test_two_steps_by_hand():
    s = [3.0, 1.0, 0.2]
    z0 = 4.0
    z1 = z0 + (s[1] - s[0]) * d(z0, s[0])  # Euler
    c0, c1 = _quad(s[1::-1], s[2], 0), _quad(s[1::-1], s[2], 1)
    assert abs(run("deis", z0, s) - (z1 + c0 * d(z1, s[1]) + c1 * d(z0, s[0]))) < 1e-12


@pytest.fixture(scope="module")
def slopes():
    """Pathwise errors on gmm2, EDM ρ=7 grid 80 → 0.002 (no final 0), 16 trajectories, N = 32 … 256."""
    return converge.measure(problems.get("gmm2"), ["deis"], steps=[32, 64, 128, 256], batch=16,
                            options={"max_order": 3})


def test_convergence_order(slopes):
    errs = [r.error for r in slopes.series("deis")]
    assert abs(slopes.slope("deis") + 3) < 0.3, errs
