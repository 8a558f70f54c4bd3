"""Noise schedules σ(t) and scalings s(t) of EDM's Table 1.

A schedule knows σ(t), σ̇(t) and σ⁻¹(σ); a scaling knows s(t) and ṡ(t). All functions accept Python floats or
tensors and compute in the input's precision (use float64 tensors for sampling).
"""

from __future__ import annotations

import math

import torch

from diffspace.errors import ConfigError

Value = torch.Tensor | float


def _t(v: Value) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)


class Schedule:
    """σ(t) with its derivative and inverse."""

    name = "schedule"

    def sigma(self, t: Value) -> torch.Tensor:
        raise NotImplementedError

    def sigma_deriv(self, t: Value) -> torch.Tensor:
        raise NotImplementedError

    def sigma_inv(self, sigma: Value) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class VPSchedule(Schedule):
    """σ(t) = sqrt(exp(½β_d t² + β_min t) − 1) (Song et al. VP SDE)."""

    name = "vp"

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1):
        if not beta_d > 0:
            raise ConfigError(f"VP schedule beta_d={beta_d} must be positive")
        self.beta_d, self.beta_min = float(beta_d), float(beta_min)

    @classmethod
    def fit(cls, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> VPSchedule:
        """β_d, β_min such that σ(ε_s) = sigma_min and σ(1) = sigma_max exactly (EDM's refit)."""
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
        beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
        return cls(beta_d, beta_min)

    def sigma(self, t: Value) -> torch.Tensor:
        t = _t(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_deriv(self, t: Value) -> torch.Tensor:
        t = _t(t)
        s = self.sigma(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * (s + 1 / s)

    def sigma_inv(self, sigma: Value) -> torch.Tensor:
        sigma = _t(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (sigma**2).log1p()).sqrt() - self.beta_min) / self.beta_d

    def __repr__(self) -> str:
        return f"VPSchedule(beta_d={self.beta_d:g}, beta_min={self.beta_min:g})"


class VESchedule(Schedule):
    """σ(t) = sqrt(t) (Song et al. VE SDE)."""

    name = "ve"

    def sigma(self, t: Value) -> torch.Tensor:
        return _t(t).sqrt()

    def sigma_deriv(self, t: Value) -> torch.Tensor:
        return 0.5 / _t(t).sqrt()

    def sigma_inv(self, sigma: Value) -> torch.Tensor:
        return _t(sigma) ** 2


class LinearSchedule(Schedule):
    """σ(t) = t (EDM, iDDPM/DDIM)."""

    name = "linear"

    def sigma(self, t: Value) -> torch.Tensor:
        return _t(t)

    def sigma_deriv(self, t: Value) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def sigma_inv(self, sigma: Value) -> torch.Tensor:
        return _t(sigma)


class Scaling:
    """s(t) with its derivative."""

    name = "scaling"

    def s(self, t: Value) -> torch.Tensor:
        raise NotImplementedError

    def s_deriv(self, t: Value) -> torch.Tensor:
        raise NotImplementedError


class NoScaling(Scaling):
    """s(t) = 1."""

    name = "none"

    def s(self, t: Value) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def s_deriv(self, t: Value) -> torch.Tensor:
        return torch.zeros_like(_t(t))


class VPScaling(Scaling):
    """s(t) = 1/sqrt(1 + σ(t)²), ṡ(t) = −σ(t)σ̇(t)s(t)³, for the schedule it is given."""

    name = "vp"

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def s(self, t: Value) -> torch.Tensor:
        return 1 / (1 + self.schedule.sigma(t) ** 2).sqrt()

    def s_deriv(self, t: Value) -> torch.Tensor:
        return -self.schedule.sigma(t) * self.schedule.sigma_deriv(t) * self.s(t) ** 3


SCHEDULES = ("vp", "ve", "linear")
SCALINGS = ("vp", "none")


def get_schedule(name: str, **kwargs) -> Schedule:
    """Schedule by Table-1 name: 'vp' (kwargs beta_d, beta_min), 've', 'linear'."""
    if name == "vp":
        return VPSchedule(**kwargs)
    if name == "ve":
        return VESchedule()
    if name == "linear":
        return LinearSchedule()
    raise ConfigError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def get_scaling(name: str, schedule: Schedule) -> Scaling:
    """Scaling by Table-1 name: 'vp' (uses the schedule's σ) or 'none'."""
    if name == "vp":
        return VPScaling(schedule)
    if name == "none":
        return NoScaling()
    raise ConfigError(f"unknown scaling {name!r}: choose one of {', '.join(SCALINGS)}")
