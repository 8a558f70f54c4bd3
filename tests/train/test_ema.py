"""EMA with a half-life in images and EDM's ramp-up (spec §1.6)."""

import pytest
import torch

from diffspace.errors import ConfigError
from diffspace.train.ema import EMA, ema_beta


def test_beta_formula_and_rampup():
    # h_eff = min(h, 0.05·cur_nimg); β = 0.5^{batch/h_eff}.
    assert ema_beta(512, 0, 500_000) == 0.0  # first step copies the network
    assert ema_beta(512, 1_000_000, 500_000) == pytest.approx(0.5 ** (512 / 50_000), rel=1e-15)
    assert ema_beta(512, 100_000_000, 500_000) == pytest.approx(0.5 ** (512 / 500_000), rel=1e-15)
    assert ema_beta(512, 0, 500_000, rampup_ratio=None) == pytest.approx(0.5 ** (512 / 500_000), rel=1e-15)


def test_halflife_halves_the_old_weight():
    # Without ramp-up, after h images the EMA of a step from 0 to 1 is exactly 1 − 0.5 = 0.5.
    net = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.zeros_(net.bias)
    ema = EMA(net, halflife_mimg=0.001, rampup_ratio=None)  # h = 1000 images
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    for i in range(10):  # 10 steps of 100 images
        ema.update(net, 100, 10_000 + 100 * i)
    torch.testing.assert_close(ema.module.weight, torch.full((2, 3), 0.5), rtol=1e-6, atol=0)


def test_only_parameters_averaged_and_frozen():
    net = torch.nn.BatchNorm1d(4)
    ema = EMA(net, 0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    with torch.no_grad():
        net.running_mean.fill_(3.0)
        net.weight.fill_(2.0)
    beta = ema.update(net, 10, 1_000_000)
    assert 0 < beta < 1
    assert torch.equal(ema.module.running_mean, net.running_mean)  # buffers are copied, not averaged
    torch.testing.assert_close(ema.module.weight, torch.full((4,), 2 - beta))  # lerp(2, 1, β)


def test_bad_halflife():
    with pytest.raises(ConfigError):
        EMA(torch.nn.Linear(1, 1), halflife_mimg=-1)
    with pytest.raises(ConfigError):
        EMA(torch.nn.Linear(1, 1), rampup_ratio=0)
