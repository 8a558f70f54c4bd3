"""σ(t), σ̇, σ⁻¹, s(t), ṡ of Table 1: derivatives against finite differences, inverses round-trip."""

import pytest
import torch

from diffspace.design import get_scaling, get_schedule
from diffspace.design.schedules import VPSchedule

T = torch.linspace(0.05, 1.0, 17, dtype=torch.float64)


@pytest.mark.parametrize("name", ["vp", "ve", "linear"])
def test_derivative_and_inverse(name):
    sched = get_schedule(name)
    h = 1e-6
    fd = (sched.sigma(T + h) - sched.sigma(T - h)) / (2 * h)  # central difference, error O(h²·σ''') ≈ 1e-9
    assert torch.allclose(sched.sigma_deriv(T), fd, rtol=1e-7)
    assert torch.allclose(sched.sigma_inv(sched.sigma(T)), T, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["vp", "ve", "linear"])
def test_vp_scaling(name):
    sched = get_schedule(name)
    scale = get_scaling("vp", sched)
    assert torch.allclose(scale.s(T), 1 / (1 + sched.sigma(T) ** 2).sqrt())
    h = 1e-6
    fd = (scale.s(T + h) - scale.s(T - h)) / (2 * h)
    assert torch.allclose(scale.s_deriv(T), fd, rtol=1e-6, atol=1e-10)
    none = get_scaling("none", sched)
    assert (none.s(T) == 1).all() and (none.s_deriv(T) == 0).all()


def test_vp_refit_reproduces_defaults():
    base = VPSchedule()
    fit = VPSchedule.fit(float(base.sigma(1e-3)), float(base.sigma(1.0)), 1e-3)
    assert abs(fit.beta_d - 19.9) < 1e-9 and abs(fit.beta_min - 0.1) < 1e-9
    # Spec §1.2 derived constants.
    assert abs(float(base.sigma(1.0)) - 152.167) < 5e-4
    assert abs(float(base.sigma(1e-5)) - 0.0010005) < 5e-8
