"""UniPC: hand-derived predictor–corrector steps (bh1, bh2, data and noise prediction), no thresholding, NFE
with the warm-up corrector, convergence orders."""

import functools
import math

import pytest
import torch

from diffspace import grids, samplers
from diffspace.denoisers import Gaussian
from diffspace.errors import ConfigError
from diffspace.samplers import converge, problems

from .problems_fixture import run_scalar

M, V = -0.4, 0.5
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
run = functools.partial(run_scalar, model=G)


def D(z: float, s: float) -> float:
    return M + V / (V + s * s) * (z - M)


def test_data_prediction_steps_by_hand():
    z0, s0, s1, s2 = 4.0, 3.0, 1.0, 0.2
    m0 = D(z0, s0)
    pred = (s1 / s0) * z0 + (1 - s1 / s0) * m0  # predictor of order 1: DDIM
    m1 = D(pred, s1)  # the corrector's call, reused by the next step
    # bh2, order-1 corrector (ρ = ½): the trapezoidal DDIM step.
    z1 = (s1 / s0) * z0 + (1 - s1 / s0) * (m0 + m1) / 2
    assert abs(run("unipc", z0, [s0, s1, s2], max_order=2, lower_order_final=False) - _second(z1, m0, m1, s0, s1, s2)) \
        < 1e-13
    # With lower_order_final (default) the last step is DDIM from the corrected state, with no corrector.
    assert abs(run("unipc", z0, [s0, s1, s2], max_order=2) - ((s2 / s1) * z1 + (1 - s2 / s1) * m1)) < 1e-13
    # bh1: B(h) = −h instead of e^{−h} − 1, so the order-1 correction is (h/2)(m1 − m0).
    z1_bh1 = pred + math.log(s0 / s1) / 2 * (m1 - m0)
    assert abs(run("unipc", z0, [s0, s1, s2], variant="bh1", max_order=1) - ((s2 / s1) * z1_bh1 + (1 - s2 / s1) * m1)) \
        < 1e-13


def _second(z1, m0, m1, s0, s1, s2):
    """Order-2 predictor (ρ = ½) of the data form: DPM-Solver++(2M) from the corrected state."""
    r = math.log(s0 / s1) / math.log(s1 / s2)
    return (s2 / s1) * z1 + (1 - s2 / s1) * (m1 + (m1 - m0) / (2 * r))


def test_noise_prediction_first_step_by_hand():
    z0, s0, s1, s2 = 4.0, 3.0, 1.0, 0.2
    e0 = (z0 - D(z0, s0)) / s0
    pred = z0 + (s1 - s0) * e0  # x − σ'(e^h − 1)ε = Euler in σ
    e1 = (pred - D(pred, s1)) / s1
    # bh2: B(h) = e^h − 1, correction −σ'B(h)·½(ε1 − ε0) = (σ' − σ)(ε1 − ε0)/2: the trapezoidal rule in σ.
    z1 = z0 + (s1 - s0) * (e0 + e1) / 2
    assert abs(run("unipc", z0, [s0, s1, s2], max_order=1, predict_x0=False)
               - (z1 + (s2 - s1) * e1)) < 1e-13


def test_nothing_is_thresholded():
    # D ≡ 5 (far outside [−1, 1]); diff-sampler's data-prediction path would clip it to 1. Here every divided
    # difference vanishes and each step is DDIM towards 5.
    five = lambda x, sigma: torch.full_like(x, 5.0)
    x = torch.randn(3, 4, dtype=torch.float64) * 80
    sig = grids.edm(7, append_zero=False)
    for variant in ("bh1", "bh2"):
        out = samplers.get("unipc")(five, x, sig, variant=variant)
        ratio = sig[-1] / sig[0]
        assert torch.allclose(out, ratio * x + (1 - ratio) * 5.0, rtol=0, atol=1e-12)


def test_warm_up_corrector_costs_one_call_on_short_grids():
    s = samplers.get("unipc")
    for steps, expect in ((1, 2), (2, 3), (3, 3), (5, 5)):
        sig = grids.edm(steps + 1, append_zero=False)
        stats = {}
        s(G, torch.ones(1, 1, dtype=torch.float64), sig, stats=stats)
        assert stats["nfe"] == s.nfe(sig) == expect, steps
    assert s.nfe(grids.edm(2)) == 2 and s.nfe(grids.edm(6), afs=True) == 5  # to 0: no corrector on the last step


def test_bad_options():
    x, sig = torch.zeros(2, 1, dtype=torch.float64), grids.edm(4)
    with pytest.raises(ConfigError, match="variant='bh3'"):
        samplers.get("unipc")(G, x, sig, variant="bh3")
    with pytest.raises(ConfigError, match="max_order=4"):
        samplers.get("unipc")(G, x, sig, max_order=4)


@pytest.fixture(scope="module")
def slopes():
    """Pathwise errors on gmm2, EDM ρ=7 grid 80 → 0.002 (no final 0), 16 trajectories, N = 32 … 256,
    max_order 2 without lower_order_final: UniPC-2, whose corrector raises the order to 3."""
    gmm2 = problems.get("gmm2")
    opts = {"max_order": 2, "lower_order_final": False}
    return {(variant, x0): converge.measure(gmm2, ["unipc"], steps=[32, 64, 128, 256], batch=16,
                                      options={**opts, "variant": variant, "predict_x0": x0})
            for variant, x0 in (("bh1", True), ("bh2", True), ("bh2", False))}


@pytest.mark.parametrize("variant,x0", [("bh1", True), ("bh2", True), ("bh2", False)])
def test_convergence_order(slopes, variant, x0):
    result = slopes[variant, x0]
    errs = [r.error for r in result.series("unipc")]
    assert abs(result.slope("unipc") + 3) < 0.3, errs
