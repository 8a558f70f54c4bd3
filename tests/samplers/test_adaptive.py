"""Adaptive-step DPM-Solver: one accepted attempt equals the hand-derived DPM-Solver-2/-3 step, NFE accounting
through stats, tolerance proportionality, bad input."""

import functools
import math

import pytest
import torch

from diffspace import grids, samplers
from diffspace.denoisers import Gaussian
from diffspace.errors import ConfigError
from diffspace.samplers import problems
from diffspace.samplers.reference import solve

from .problems_fixture import run_scalar

M, V = -0.4, 0.5
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
run = functools.partial(run_scalar, model=G)


def eps(z: float, s: float) -> float:
    return (z - (M + V / (V + s * s) * (z - M))) / s


def test_one_attempt_is_a_dpm_solver_step():
    # h_init covers the whole interval and the tolerance is huge: one accepted attempt.
    z, s, s1 = 3.0, 2.0, 0.5
    h = math.log(s / s1)
    one = dict(h_init=h, rtol=1e6, atol=1e6)
    stats = {}
    out = samplers.get("dpm_adaptive")(G, torch.tensor([[z]], dtype=torch.float64), torch.tensor([s, s1]),
                                       order=2, stats=stats, **one)
    # Order 2: DPM-Solver-2 with r = ½, i.e. Euler to σ_m = sqrt(σσ') and the slope there (= dpm_2).
    sm = math.sqrt(s * s1)
    assert abs(float(out) - run("dpm_2", z, [s, s1])) < 1e-13
    assert abs(float(out) - (z + (s1 - s) * eps(z + (sm - s) * eps(z, s), sm))) < 1e-13
    assert stats == {"nfe": 2, "steps": 1, "n_accept": 1, "n_reject": 0}
    # Order 3: DPM-Solver-3 (r₁ = ⅓, r₂ = ⅔), written in σ: σ(λ + rh) = σ^{1−r}σ'^r.
    s_1, s_2 = s ** (2 / 3) * s1 ** (1 / 3), s ** (1 / 3) * s1 ** (2 / 3)
    e0 = eps(z, s)
    u1 = z + (s_1 - s) * e0
    e1 = eps(u1, s_1)
    u2 = z + (s_2 - s) * e0 - s_2 * 2 * (math.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e1 - e0)
    e2 = eps(u2, s_2)
    expect = z + (s1 - s) * e0 - s1 * 1.5 * (math.expm1(h) / h - 1) * (e2 - e0)
    stats = {}
    assert abs(run("dpm_adaptive", z, [s, s1], order=3, stats=stats, **one) - expect) < 1e-13
    assert stats["nfe"] == 3


def test_nfe_and_tolerance():
    problem = problems.get("gmm2")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    ref = solve(problem.denoiser, x, 80.0, 0.002, rtol=1e-11, atol=1e-11)
    errors, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        calls, stats = [], {}

        def counted(x, sigma, calls=calls):
            calls.append(1)
            return problem.denoiser(x, sigma)

        out = samplers.get("dpm_adaptive")(counted, x, grids.edm(2, append_zero=False), rtol=rtol, atol=rtol / 10,
                                           stats=stats)
        # Every attempt costs `order` calls, accepted or not.
        assert len(calls) == stats["nfe"] == 3 * (stats["n_accept"] + stats["n_reject"]) == 3 * stats["steps"]
        errors.append(float((out - ref).norm(dim=1).mean()))
        nfes.append(stats["nfe"])
    # Tighter tolerances cost more calls and give smaller errors.
    assert nfes[0] < nfes[1] < nfes[2]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_bad_input():
    x = torch.zeros(2, 1, dtype=torch.float64)
    s = samplers.get("dpm_adaptive")
    with pytest.raises(ConfigError, match="needs a grid ending at sigma_min > 0"):
        s(G, x, grids.edm(4))
    with pytest.raises(ConfigError, match="order=4"):
        s(G, x, grids.edm(4, append_zero=False), order=4)
    with pytest.raises(ConfigError, match="rtol=0"):
        s(G, x, grids.edm(4, append_zero=False), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="depends on the model"):
        s.nfe(grids.edm(4, append_zero=False))
