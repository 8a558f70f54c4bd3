"""diff-sampler's variable-step iPNDM (`ipndm_v`) and `lms` (= `ipndm`, k-diffusion's sample_lms): hand-derived
coefficients and steps, how the two differ on uneven grids, convergence orders."""

import functools

import pytest
import torch

from diffspace import grids, samplers
from diffspace.denoisers import Gaussian
from diffspace.samplers import converge, problems
from diffspace.samplers.ipndm_v import ipndm_v_coefficients
from diffspace.samplers.multistep import adams_bashforth_weights

from .problems_fixture import run_scalar

M, V = -0.4, 0.5
G = Gaussian(torch.tensor([M], dtype=torch.float64), torch.tensor(V, dtype=torch.float64))
run = functools.partial(run_scalar, model=G)


def d(z: float, s: float) -> float:
    return (z - (M + V / (V + s * s) * (z - M))) / s


def test_uniform_steps():
    # Orders 2 and 3: the classical Adams–Bashforth coefficients.
    classical = {2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12]}
    for k, coeffs in classical.items():
        c = ipndm_v_coefficients(k, *([-0.3] * k))
        assert max(abs(a - b) for a, b in zip(c, coeffs)) < 1e-14
    # Order 4: AB3 + t₂·∇³d with t₂ = (5/12 + (3/4)(1/18)) = 11/24 from diff-sampler's expression, where AB4 has
    # 3/8 = 9/24 (55/24, −59/24, 37/24, −9/24); so the fourth-order coefficients are not AB4's even here.
    ab3, nabla3 = [23 / 12, -16 / 12, 5 / 12, 0.0], [1.0, -3.0, 3.0, -1.0]
    c = ipndm_v_coefficients(4, *([-0.3] * 4))
    assert max(abs(a - (b + 11 / 24 * n)) for a, b, n in zip(c, ab3, nabla3)) < 1e-14


def test_uneven_steps_against_the_exact_lagrange_weights():
    # σ nodes 6.0, 3.6, 2.1, 1.3 → 0.7: steps h = −0.6, h1 = −0.8, h2 = −1.5, h3 = −2.4.
    nodes, nxt = [1.3, 2.1, 3.6, 6.0], 0.7
    h, h1, h2 = nxt - nodes[0], nodes[0] - nodes[1], nodes[1] - nodes[2]
    # Order 2 is the exact variable-step Adams–Bashforth weight.
    assert max(abs(a - b) for a, b in zip(ipndm_v_coefficients(2, h, h1),
                                          adams_bashforth_weights(nodes[:2], nxt))) < 1e-14
    # Order 3: c = AB2 + t·[1, −(1 + h1/h2), h1/h2]; the exact Lagrange factor is h(2h + 3h1)/(6h1(h1 + h2)),
    # diff-sampler's expression gives (1 − h²/(3h1(h1 + h2)))/2. The difference is exactly that direction.
    t_exact = h * (2 * h + 3 * h1) / (6 * h1 * (h1 + h2))
    t_code = (1 - h * h / (3 * h1 * (h1 + h2))) / 2
    direction = [1.0, -(1 + h1 / h2), h1 / h2]
    exact = adams_bashforth_weights(nodes[:3], nxt)
    ours = ipndm_v_coefficients(3, h, h1, h2)
    for a, b, u in zip(ours, exact, direction):
        assert abs(a - b - (t_code - t_exact) * u) < 1e-13
    assert abs(t_code - t_exact) > 0.05  # a real difference on this grid
    # Order 3 is still consistent: constants and linear d are integrated exactly (the correction direction
    # annihilates linear data), quadratics are not.
    c = ipndm_v_coefficients(3, h, h1, h2)
    for deg, exact_ok in ((0, True), (1, True), (2, False)):
        integral = (nxt ** (deg + 1) - nodes[0] ** (deg + 1)) / (deg + 1)
        got = (nxt - nodes[0]) * sum(cj * t**deg for cj, t in zip(c, nodes))
        assert (abs(got - integral) < 1e-12) == exact_ok, deg
    # Order 4: the weights of the fourth-order correction sum to q(h2/h3 − h1/h2), q = h1(h1 + h2)/(h2(h2 + h3)),
    # not 0, so on an uneven grid even a constant d is not integrated exactly; on a geometric grid it is.
    h3 = nodes[2] - nodes[3]
    c = ipndm_v_coefficients(4, h, h1, h2, h3)
    t = (1 - h * h / (3 * h1 * (h1 + h2))) / 2
    s_ = h + h1
    t2 = ((1 - h / (3 * s_)) / 2 + (1 - h / (2 * s_)) * h / (6 * (s_ + h2))) * h * s_ * (s_ + h2) \
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    assert abs(sum(c) - 1 - t2 * q * (h2 / h3 - h1 / h2)) < 1e-13 and abs(sum(c) - 1) > 1e-3, t
    geometric = [-0.3 * 1.7**k for k in range(4)]
    assert abs(sum(ipndm_v_coefficients(4, *geometric)) - 1) < 1e-13


def test_ipndm_v_three_steps_by_hand():
    s = [3.0, 1.5, 0.6, 0.1]
    z0 = 4.0
    z1 = z0 + (s[1] - s[0]) * d(z0, s[0])  # Euler
    h, h1 = s[2] - s[1], s[1] - s[0]
    z2 = z1 + h * ((1 + h / (2 * h1)) * d(z1, s[1]) - h / (2 * h1) * d(z0, s[0]))
    h, h1, h2 = s[3] - s[2], s[2] - s[1], s[1] - s[0]
    t = (1 - h * h / (3 * h1 * (h1 + h2))) / 2
    c = [1 + h / (2 * h1) + t, -h / (2 * h1) - (1 + h1 / h2) * t, t * h1 / h2]
    z3 = z2 + h * (c[0] * d(z2, s[2]) + c[1] * d(z1, s[1]) + c[2] * d(z0, s[0]))
    assert abs(run("ipndm_v", z0, s) - z3) < 1e-13
    # lms (= ipndm) takes the same first two steps and differs in the third.
    assert abs(run("lms", z0, s[:3]) - z2) < 1e-13
    assert abs(run("lms", z0, s) - z3) > 1e-4


def test_lms_is_ipndm():
    assert samplers.get("lms").fn is samplers.get("ipndm").fn
    D = problems.get("gmm2").denoiser
    x = torch.randn(4, 2, dtype=torch.float64) * 80
    sig = grids.edm(8)
    assert torch.equal(samplers.get("lms")(D, x, sig), samplers.get("ipndm")(D, x, sig))


@pytest.fixture(scope="module")
def slopes():
    """Pathwise errors on gmm2, EDM ρ=7 grid 80 → 0.002 (no final 0), 16 trajectories, N = 64 … 512."""
    return converge.measure(problems.get("gmm2"), ["ipndm_v"], steps=[64, 128, 256, 512], batch=16,
                            options={"ipndm_v.max_order": 3})


def test_convergence_order(slopes):
    # max_order 3: third order on a smooth grid (step ratios 1 + O(1/N)) despite the inexact factor.
    errs = [r.error for r in slopes.series("ipndm_v")]
    assert abs(slopes.slope("ipndm_v") + 3) < 0.3, errs
