"""DPM-Solver multistep in noise-prediction form (dpm_2m, dpm_3m): hand-derived steps on a 1-D Gaussian,
exactness of the third-order update when ε is quadratic in λ = −log σ, and convergence orders."""

import functools
import math

import pytest
import torch

from diffspace.denoisers import Gaussian
from diffspace.samplers import converge, problems

from .problems_fixture import run_scalar

M, V = -0.4, 0.5
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
run = functools.partial(run_scalar, model=G)


def eps(z: float, s: float) -> float:
    return (z - (M + V / (V + s * s) * (z - M))) / s


def test_dpm_2m_steps():
    z0, s0, s1, s2 = 4.0, 3.0, 1.0, 0.2
    z1 = z0 + (s1 - s0) * eps(z0, s0)  # first step: Euler in σ on ε
    r = math.log(s0 / s1) / math.log(s1 / s2)  # h_{i−1}/h_i in λ
    z2 = z1 + (s2 - s1) * (eps(z1, s1) + (eps(z1, s1) - eps(z0, s0)) / (2 * r))
    assert abs(run("dpm_2m", z0, [s0, s1, s2], lower_order_final=False) - z2) < 1e-13
    # By default (diff-sampler's lower_order_final) the last step is first order.
    assert abs(run("dpm_2m", z0, [s0, s1, s2]) - (z1 + (s2 - s1) * eps(z1, s1))) < 1e-13
    # A step to σ = 0 lands on D, whatever the order.
    z1 = run("dpm_2m", z0, [s0, s1])
    assert abs(run("dpm_2m", z0, [s0, s1, 0.0], lower_order_final=False) - (z1 - s1 * eps(z1, s1))) < 1e-14


def _eps_quadratic(c0=0.3, c1=-0.7, c2=0.25):
    """A model whose ε depends only on λ = −log σ: ε(λ) = c0 + c1λ + c2λ², i.e. D = x − σε(λ)."""
    e = lambda lam: c0 + c1 * lam + c2 * lam * lam

    def model(x, sigma):
        s = float(sigma[0])
        return x - s * e(-math.log(s))

    def exact(x, s, s1):  # x(σ') = x − σ'∫_0^h e^v ε(λ' − v) dv, h = log(σ/σ'); ε(λ' − v) = e0 − e1 v + e2 v²
        lam1, h = -math.log(s1), math.log(s / s1)
        e0, e1, e2 = e(lam1), c1 + 2 * c2 * lam1, c2
        E = math.exp(h)
        return x - s1 * (e0 * (E - 1) - e1 * (E * (h - 1) + 1) + e2 * (E * (h * h - 2 * h + 2) - 2))

    return model, exact


def test_dpm_3m_third_step_is_exact_for_quadratic_noise_prediction():
    model, exact = _eps_quadratic()
    sig = [5.0, 2.0, 0.9, 0.3]
    before = run("dpm_3m", 1.3, sig[:3], model=model, lower_order_final=False)  # warm-up orders 1 and 2
    assert abs(run("dpm_3m", 1.3, sig, model=model, lower_order_final=False) - exact(before, sig[2], sig[3])) < 1e-13
    # DPM-Solver's published coefficient (diff-sampler's, compat=True) keeps half of the ε'' term: not exact.
    off = run("dpm_3m", 1.3, sig, model=model, lower_order_final=False, compat=True) - exact(before, sig[2], sig[3])
    assert abs(off) > 1e-3


@pytest.fixture(scope="module")
def slopes():
    """Pathwise errors on gmm2, EDM ρ=7 grid 80 → 0.002 (no final 0), 16 trajectories, N = 32 … 256;
    lower_order_final off so that every step after the warm-up has the nominal order."""
    opts = {"dpm_2m.lower_order_final": False, "dpm_3m.lower_order_final": False}
    exact = converge.measure(problems.get("gmm2"), ["dpm_2m", "dpm_3m"], steps=[32, 64, 128, 256], batch=16,
                             options=opts)
    compat = converge.measure(problems.get("gmm2"), ["dpm_3m"], steps=[32, 64, 128, 256], batch=16,
                              options={"compat": True, "lower_order_final": False})
    return {"dpm_2m": exact, "dpm_3m": exact, "dpm_3m compat": compat}


@pytest.mark.parametrize("name,order", [("dpm_2m", 2), ("dpm_3m", 3)])
def test_convergence_orders(slopes, name, order):
    # Nominal orders 2 and 3. Tolerance ±0.3 as for the others.
    result = slopes[name]
    errs = [r.error for r in result.series(name)]
    assert abs(result.slope(name) + order) < 0.3, errs


def test_published_coefficient_is_not_third_order(slopes):
    # With the published φ₃ the third-order term is half the Taylor one: asymptotically second order. Over
    # N = 32 … 256 the fit is still pre-asymptotic (2.34 measured; the data-form twin reaches 1.99 on the last
    # doubling of 256 → 512), so the test asks for a slope clearly below 3 and a larger error than the exact
    # coefficient's at the finest grid.
    compat, exact = slopes["dpm_3m compat"], slopes["dpm_3m"]
    errs = [r.error for r in compat.series("dpm_3m")]
    assert 1.7 < -compat.slope("dpm_3m") < 2.6, errs
    assert errs[-1] > 2 * exact.series("dpm_3m")[-1].error


@pytest.mark.parametrize("name", ["dpm_2m", "dpm_3m", "ipndm_v", "unipc", "deis"])
def test_analytical_first_step_of_the_new_samplers(name):
    from diffspace import grids, samplers

    s = samplers.get(name)
    sig = grids.edm(6, append_zero=False)
    x = torch.randn(3, 1, dtype=torch.float64) * 80
    seen, stats = [], {}
    s(G, x, sig, afs=True, callback=seen.append, stats=stats)
    # AFS: D = x − σx/sqrt(1 + σ²) at the first level instead of a call; one call fewer.
    s0 = sig[0]
    assert torch.equal(seen[0]["denoised"], x - s0 * x / (1 + s0**2).sqrt())
    assert stats["nfe"] == s.nfe(sig) - 1 == s.nfe(sig, afs=True)
