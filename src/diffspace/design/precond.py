"""Preconditioning D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) of EDM's Table 1.

Each wrapper holds a raw network as `.model`, called as `model(x, c_noise, class_labels=..., **kwargs)` (the
forward of diffspace.nets and NVlabs/edm networks), so EDM state dicts map key for key (`model.…`).
"""

from __future__ import annotations

import torch
from torch import nn

from diffspace.design.schedules import VPSchedule
from diffspace.errors import ConfigError

__all__ = ["Precond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "PRECONDS", "build_precond"]


class Precond(nn.Module):
    """Common part: dtype handling, label reshaping, shape checks; subclasses give the four coefficients."""

    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def __init__(self, model: nn.Module, *, label_dim: int = 0, use_fp16: bool = False,
                 out_channels: int | None = None, img_resolution: int | None = None,
                 img_channels: int | None = None):
        super().__init__()
        self.model = model
        self.img_resolution, self.img_channels = img_resolution, img_channels  # data shape, when known
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.out_channels = out_channels  # keep only the first C output channels (iDDPM/ADM learn_sigma nets)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for float32 sigma shaped to broadcast against x."""
        raise NotImplementedError

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None, force_fp32: bool = False,
                **model_kwargs) -> torch.Tensor:
        x = x.to(torch.float32)
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if self.img_resolution is not None and self.img_channels is not None and tuple(x.shape[1:]) != expected:
            raise ConfigError(f"x has shape {tuple(x.shape)} but the network expects [batch, {expected[0]}, "
                              f"{expected[1]}, {expected[2]}]: draw latents with that shape")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.numel() not in (1, x.shape[0]):
            raise ConfigError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}: pass one per sample")
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        if F_x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):  # autocast may give bf16
            raise ConfigError(f"network returned {F_x.dtype}, expected {dtype}")
        if self.out_channels is not None:
            F_x = F_x[:, : self.out_channels]
        return c_skip * x + c_out * F_x.to(torch.float32)


class EDMPrecond(Precond):
    """EDM: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/sqrt(σ²+σ_d²), c_in = 1/sqrt(σ²+σ_d²), c_noise = ¼ ln σ."""

    def __init__(self, model: nn.Module, *, sigma_min: float = 0.0, sigma_max: float = float("inf"),
                 sigma_data: float = 0.5, **kwargs):
        super().__init__(model, **kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VEPrecond(Precond):
    """VE: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½σ)."""

    def __init__(self, model: nn.Module, *, sigma_min: float = 0.02, sigma_max: float = 100.0, **kwargs):
        super().__init__(model, **kwargs)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        return one, sigma, one, (0.5 * sigma).log()


class VPPrecond(Precond):
    """VP: c_skip = 1, c_out = −σ, c_in = 1/sqrt(σ²+1), c_noise = (M−1)·σ⁻¹(σ)."""

    def __init__(self, model: nn.Module, *, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, **kwargs):
        super().__init__(model, **kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        schedule = VPSchedule(beta_d, beta_min)
        self.sigma_min = float(schedule.sigma(epsilon_t))
        self.sigma_max = float(schedule.sigma(1.0))

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        c_noise = (self.M - 1) * VPSchedule(self.beta_d, self.beta_min).sigma_inv(sigma)
        return one, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


class iDDPMPrecond(Precond):
    """iDDPM: c_skip = 1, c_out = −σ, c_in = 1/sqrt(σ²+1), c_noise = M−1−argmin_j |u_j − σ|; σ snaps to u_j."""

    def __init__(self, model: nn.Module, *, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                 out_channels: int | None = None, **kwargs):
        super().__init__(model, out_channels=out_channels, **kwargs)
        from diffspace.design.grids import iddpm_table

        self.C_1, self.C_2, self.M = float(C_1), float(C_2), int(M)
        self.register_buffer("u", iddpm_table(M, C_1, C_2).to(torch.float32))

    @property
    def sigma_min(self) -> float:  # follow the u buffer, also after a state dict is loaded
        return float(self.u[self.M - 1])

    @property
    def sigma_max(self) -> float:
        return float(self.u[0])

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        index = self.round_sigma(sigma, return_index=True).to(torch.float32)
        return one, -sigma, 1 / (sigma**2 + 1).sqrt(), self.M - 1 - index

    def round_sigma(self, sigma, return_index: bool = False):
        sigma = torch.as_tensor(sigma)
        u = self.u.to(sigma.device, torch.float32)
        index = torch.cdist(sigma.to(torch.float32).reshape(1, -1, 1), u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape)


PRECONDS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": iDDPMPrecond}


def build_precond(name: str, model: nn.Module, **kwargs) -> Precond:
    """Preconditioner by Table-1 name ('edm', 'vp', 've', 'iddpm') around a raw network."""
    if name not in PRECONDS:
        raise ConfigError(f"unknown preconditioning {name!r}: choose one of {', '.join(PRECONDS)}")
    return PRECONDS[name](model, **kwargs)


def sigma_data_of(data: torch.Tensor) -> float:
    """Per-element standard deviation of a data batch (the σ_data EDM's preconditioning assumes)."""
    return float(data.to(torch.float64).std())


