"""Exponential moving average of the network parameters with a half-life in images, as in EDM.

Per step of `batch` images: h_eff = min(h, r·cur_nimg) (ramp-up, r = 0.05), β = 0.5^{batch/h_eff} and
p_ema ← p_net + β·(p_ema − p_net). `cur_nimg` is the number of images seen *before* the step, as in EDM, so the
first step copies the network (h_eff = 0 ⇒ β = 0). Only parameters are averaged; buffers are copied.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from diffspace.errors import ConfigError

__all__ = ["ema_beta", "EMA"]


def ema_beta(batch: int, cur_nimg: int, halflife_nimg: float, rampup_ratio: float | None = 0.05) -> float:
    """Decay β = 0.5^{batch / h_eff} with h_eff = min(halflife, rampup_ratio·cur_nimg) (EDM's training loop)."""
    h = float(halflife_nimg)
    if rampup_ratio is not None:
        h = min(h, cur_nimg * float(rampup_ratio))
    return 0.5 ** (batch / max(h, 1e-8))


class EMA:
    """A frozen copy of `net` tracking its parameters; `update(net, batch, cur_nimg)` after each optimiser step.

    `halflife_mimg` is EDM's `--ema` (million images); `rampup_ratio=None` disables the ramp-up.
    """

    def __init__(self, net: nn.Module, halflife_mimg: float = 0.5, rampup_ratio: float | None = 0.05):
        if not (halflife_mimg >= 0 and math.isfinite(halflife_mimg)):
            raise ConfigError(f"EMA half-life {halflife_mimg} Mimg must be a finite number >= 0")
        if rampup_ratio is not None and not rampup_ratio > 0:
            raise ConfigError(f"EMA ramp-up ratio {rampup_ratio} must be > 0 (or None to disable it)")
        self.halflife_nimg = float(halflife_mimg) * 1e6
        self.rampup_ratio = rampup_ratio
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, batch: int, cur_nimg: int) -> float:
        """Average `net` into the EMA after a step of `batch` images starting at `cur_nimg`; returns β."""
        beta = ema_beta(batch, cur_nimg, self.halflife_nimg, self.rampup_ratio)
        for p_ema, p_net in zip(self.module.parameters(), net.parameters(), strict=True):
            p_ema.copy_(p_net.detach().lerp(p_ema, beta))
        for b_ema, b_net in zip(self.module.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b_net)
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
