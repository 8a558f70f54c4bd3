"""The low-NFE family: closed-form steps on a 1-D Gaussian, exactness of the multistep formulas on polynomial
data predictions, convergence orders on an exact mixture, NFE accounting of every registered sampler, AFS,
and the bad-input rules."""

import functools
import math

import pytest
import torch

from diffspace import grids, samplers
from diffspace.denoisers import Gaussian, GaussianMixture
from diffspace.errors import ConfigError
from diffspace.samplers import converge, problems
from diffspace.samplers.multistep import adams_bashforth_weights

from .problems_fixture import FixedNoise, run_scalar

M, V = -0.4, 0.5  # 1-D Gaussian target N(M, V)
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
POSITIVE_END = {n for n in samplers.names() if samplers.get(n).positive_end}
ADAPTIVE = {"dpm_adaptive"}  # NFE chosen at run time (tests/samplers/test_adaptive.py)


def D(z: float, s: float) -> float:
    return M + V / (V + s * s) * (z - M)


def d(z: float, s: float) -> float:
    return (z - D(z, s)) / s


run = functools.partial(run_scalar, model=G)


# ---- closed-form steps --------------------------------------------------------------------------------------

def test_dpm_2_single_step():
    z, s, s1 = 3.0, 2.0, 0.5
    for r in (0.5, 0.3):
        sm = s ** (1 - r) * s1**r  # r = ½: geometric midpoint (midpoint in log σ)
        zm = z + (sm - s) * d(z, s)
        expect = z + (s1 - s) * ((1 - 1 / (2 * r)) * d(z, s) + d(zm, sm) / (2 * r))
        assert abs(run("dpm_2", z, [s, s1], r=r) - expect) < 1e-14
    assert run("dpm_2", z, [s, 0.0]) == D(z, s)  # the step to σ = 0 is Euler, which lands on D


def test_dpmpp_2m_two_steps():
    z0, s0, s1, s2 = 4.0, 3.0, 1.0, 0.2
    z1 = (s1 / s0) * z0 + (1 - s1 / s0) * D(z0, s0)  # first step: first order (DDIM)
    r = math.log(s0 / s1) / math.log(s1 / s2)  # h_{i−1}/h_i in λ = −log σ
    target = (1 + 1 / (2 * r)) * D(z1, s1) - D(z0, s0) / (2 * r)
    assert abs(run("dpmpp_2m", z0, [s0, s1, s2]) - ((s2 / s1) * z1 + (1 - s2 / s1) * target)) < 1e-14
    # A final step to σ = 0 is first order: it returns D.
    z1 = run("dpmpp_2m", z0, [s0, s1])
    assert abs(run("dpmpp_2m", z0, [s0, s1, 0.0]) - D(z1, s1)) < 1e-15


def _lambda_quadratic(c0=0.3, c1=-0.7, c2=0.25):
    """A 'denoiser' whose output depends only on λ = −log σ: m(λ) = c0 + c1λ + c2λ² (so the ODE is linear)."""
    m = lambda lam: c0 + c1 * lam + c2 * lam * lam

    def model(x, sigma):
        return torch.full_like(x, m(-math.log(float(sigma[0]))))

    def exact(x, s, s1):  # x(σ') = e^{−h}x + ∫_0^h e^{u−h} m(λ + u) du, h = log(σ/σ')
        lam, h = -math.log(s), math.log(s / s1)
        a0, a1, a2 = m(lam), c1 + 2 * c2 * lam, c2  # m(λ + u) = a0 + a1 u + a2 u²
        e = math.exp(-h)
        return e * x + a0 * (1 - e) + a1 * (h - 1 + e) + a2 * (h * h - 2 * h + 2 - 2 * e)

    return model, exact


def test_dpmpp_3m_third_step_is_exact_for_quadratic_data_prediction():
    # A three-point multistep exponential integrator must integrate exactly when D is quadratic in λ.
    model, exact = _lambda_quadratic()
    sig = [5.0, 2.0, 0.9, 0.3]
    before = run("dpmpp_3m", 1.3, sig[:3], model=model)  # two warm-up steps (orders 1 and 2)
    assert abs(run("dpmpp_3m", 1.3, sig, model=model) - exact(before, sig[2], sig[3])) < 1e-13
    # The peers' coefficient (−φ₃·D2 with D2 ≈ h²D''/2) misses half of the D'' term: not exact.
    off = abs(run("dpmpp_3m", 1.3, sig, model=model, compat=True) - exact(before, sig[2], sig[3]))
    assert off > 1e-3


def test_adams_bashforth_weights():
    # Uniform steps: the classical Adams–Bashforth coefficients (iPNDM's fixed-step formulas).
    classical = {2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for k, coeffs in classical.items():
        w = adams_bashforth_weights([10.0 - j for j in range(k)], 11.0)
        assert max(abs(a - b) for a, b in zip(w, coeffs)) < 1e-13
    # Uneven, decreasing nodes: exact for every polynomial of degree < k; order 2 matches the variable-step
    # formula 1 + h/(2h₋), −h/(2h₋) (h = σ' − σ, h₋ = σ − σ₋).
    nodes, nxt = [1.3, 2.1, 3.6, 6.0], 0.7
    for k in (1, 2, 3, 4):
        w = adams_bashforth_weights(nodes[:k], nxt)
        for deg in range(k):
            integral = (nxt ** (deg + 1) - nodes[0] ** (deg + 1)) / (deg + 1)
            assert abs((nxt - nodes[0]) * sum(wj * t**deg for wj, t in zip(w, nodes)) - integral) < 1e-12
    h, hm = nxt - nodes[0], nodes[0] - nodes[1]
    assert max(abs(a - b) for a, b in zip(adams_bashforth_weights(nodes[:2], nxt),
                                          [1 + h / (2 * hm), -h / (2 * hm)])) < 1e-14


def test_ipndm_steps():
    z0, s0, s1, s2 = 4.0, 3.0, 1.0, 0.2
    z1 = z0 + (s1 - s0) * d(z0, s0)  # order 1 first
    h, hm = s2 - s1, s1 - s0
    z2 = z1 + h * ((1 + h / (2 * hm)) * d(z1, s1) - h / (2 * hm) * d(z0, s0))
    assert abs(run("ipndm", z0, [s0, s1, s2]) - z2) < 1e-14
    assert abs(run("ipndm", z0, [s0, s1, s2], max_order=1) - (z1 + h * d(z1, s1))) < 1e-14


def test_euler_ancestral_and_dpmpp_2m_sde_steps():
    z, s, s1, xi = 2.0, 1.5, 0.6, 0.8
    up = min(s1, 0.5 * s1 * math.sqrt(1 - s1**2 / s**2))  # eta = 0.5
    down = math.sqrt(s1**2 - up**2)
    expect = z + (down - s) * d(z, s) + up * xi
    assert abs(run("euler_ancestral", z, [s, s1], eta=0.5, noise=FixedNoise(xi)) - expect) < 1e-14
    assert run("euler_ancestral", z, [s, 0.0], noise=FixedNoise()) == D(z, s)
    # DPM-Solver++(2M) SDE, first step: x' = (σ'/σ)e^{−ηh}x + (1 − e^{−(1+η)h})D + σ'·sqrt(1 − e^{−2ηh})·ξ.
    h = math.log(s / s1)
    expect = s1 / s * math.exp(-h) * z + (1 - math.exp(-2 * h)) * D(z, s) + s1 * math.sqrt(1 - math.exp(-2 * h)) * xi
    assert abs(run("dpmpp_2m_sde", z, [s, s1], noise=FixedNoise(xi)) - expect) < 1e-14


def test_limits_of_the_stochastic_samplers():
    # eta = 0 removes all noise. Euler ancestral is then an Euler step; DPM-Solver++(2M) SDE's first step is
    # x' = (σ'/σ)x + (1 − σ'/σ)D and its second adds ½(1 − σ''/σ')(D_1 − D_0)/r, r = log(σ/σ')/log(σ'/σ'')
    # (hand-derived from the update with η = 0: e^{−ηh} = 1, 1 − e^{−h} = 1 − σ'/σ).
    z0, s0, s1, s2 = 2.5, 2.0, 0.8, 0.3
    z1 = s1 / s0 * z0 + (1 - s1 / s0) * D(z0, s0)
    assert abs(run("euler_ancestral", z0, [s0, s1], eta=0.0) - z1) < 1e-14
    r = math.log(s0 / s1) / math.log(s1 / s2)
    z2 = s2 / s1 * z1 + (1 - s2 / s1) * D(z1, s1) + 0.5 * (1 - s2 / s1) * (D(z1, s1) - D(z0, s0)) / r
    assert abs(run("dpmpp_2m_sde", z0, [s0, s1, s2], eta=0.0) - z2) < 1e-14


# ---- orders -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmm2_slopes():
    """Pathwise errors on the built-in gmm2 mixture (K=4, d=2), EDM ρ=7 grid from 80 to σ_min = 0.002 (no final
    jump), 16 trajectories, reference: Dormand–Prince at rtol 1e-11."""
    names = ["dpm_2", "dpmpp_2m", "dpmpp_3m", "ipndm"]
    return converge.measure(problems.get("gmm2"), names, steps=[64, 128, 256, 512, 1024], batch=16,
                            options={"ipndm.max_order": 3})


@pytest.mark.parametrize("name,order", [("dpm_2", 2), ("dpmpp_2m", 2), ("ipndm", 3), ("dpmpp_3m", 3)])
def test_convergence_orders_on_exact_mixture(gmm2_slopes, name, order):
    # Steps N ∈ [64, 1024]; ipndm with max_order=3. Nominal orders: DPM-Solver-2 and DPM-Solver++(2M) 2,
    # iPNDM-3 and DPM-Solver++(3M) 3. Tolerance ±0.3 on the fit over the whole range (the first doublings are
    # pre-asymptotic: ramp-up of the multistep order, large steps at σ_max); ±0.15 on the last doubling.
    errs = [r.error for r in gmm2_slopes.series(name)]
    assert abs(gmm2_slopes.slope(name) + order) < 0.3, errs
    assert abs(converge.fit_slope([512, 1024], errs[-2:]) + order) < 0.15, errs


# ---- NFE, AFS, options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", samplers.names())
def test_nfe_formula_equals_counted_calls(name):
    D2 = GaussianMixture([1.0, 2.0], [[0.0, 1.0], [1.5, -1.0]], [[0.2, 0.1], [0.05, 0.3]])
    s = samplers.get(name)
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return D2(x, sigma)

    for n in (1, 2, 3, 7):
        for zero in (True, False):
            sig = grids.edm(n, append_zero=zero) if zero else grids.edm(n + 1, append_zero=False)
            x = torch.randn(2, 2, dtype=torch.float64) * 80
            kw = {"noise": samplers.StackedRandom(range(2))} if "noise" in s._params else {}
            if zero and name in POSITIVE_END:
                with pytest.raises(ConfigError, match="needs a grid ending at sigma_min > 0"):
                    s(counted, x, sig, **kw)
                continue
            calls.clear()
            stats = {}
            s(counted, x, sig, stats=stats, **kw)
            if name in ADAPTIVE:
                assert len(calls) == stats["nfe"], (name, n, zero)
                continue
            assert len(calls) == stats["nfe"] == s.nfe(sig), (name, n, zero)


@pytest.mark.parametrize("name", ["ddim", "accel_ode", "dpm_2", "dpmpp_2m", "dpmpp_3m", "ipndm"])
def test_analytical_first_step(name):
    s = samplers.get(name)
    assert "afs" in s.options
    sig = grids.edm(6)
    x = torch.randn(3, 1, dtype=torch.float64) * 80
    seen, stats = [], {}
    s(G, x, sig, afs=True, callback=seen.append, stats=stats)
    # AFS (spec §3.9): d = x/sqrt(1 + σ²) instead of a call, i.e. D = x − σx/sqrt(1 + σ²); one call fewer.
    s0 = sig[0]
    assert torch.equal(seen[0]["denoised"], x - s0 * x / (1 + s0**2).sqrt())
    assert stats["nfe"] == s.nfe(sig) - 1 == s.nfe_fn(sig, afs=True)


def test_one_step_to_zero_lands_on_D_unclipped():
    """No hidden clipping or thresholding: with D ≡ 5 (far outside [−1, 1]) every sampler that may step to
    σ = 0 returns exactly 5 after one step."""
    five = lambda x, sigma: torch.full_like(x, 5.0)
    x = torch.randn(2, 3, dtype=torch.float64) * 10
    for name in samplers.names():
        if name in POSITIVE_END:
            continue
        s = samplers.get(name)
        kw = {"noise": samplers.StackedRandom(range(2))} if "noise" in s._params else {}
        assert torch.equal(s(five, x, torch.tensor([10.0, 0.0], dtype=torch.float64), **kw),
                           torch.full_like(x, 5.0)), name


def test_bad_options_are_refused_by_name():
    x, sig = torch.zeros(2, 1, dtype=torch.float64), grids.edm(4)
    with pytest.raises(ConfigError, match="'dpmpp_2m' does not take option.*eta.*it takes: afs"):
        samplers.get("dpmpp_2m")(G, x, sig, eta=0.5)
    with pytest.raises(ConfigError, match="'accel_ode' does not take option.*S_churn"):
        samplers.get("accel_ode")(G, x, sig, S_churn=10)
    with pytest.raises(ConfigError, match="max_order=5"):
        samplers.get("ipndm")(G, x, sig, max_order=5)
    with pytest.raises(ConfigError, match="r=0"):
        samplers.get("dpm_2")(G, x, sig, r=0)
    with pytest.raises(ConfigError, match="solver_type='rk4'"):
        samplers.get("dpmpp_2m_sde")(G, x, sig, solver_type="rk4")
    with pytest.raises(ConfigError, match="unknown sampler 'dpmpp_2s'.*dpmpp_2m"):
        samplers.get("dpmpp_2s")
    names = set(samplers.names())
    assert {"ddim_type", "ddim", "ddpm_type", "ddpm", "accel_sde", "accel_ode", "accel_ode2", "dpm_2", "dpmpp_2m",
            "dpmpp_3m", "ipndm", "euler_ancestral", "dpmpp_2m_sde"} <= names
