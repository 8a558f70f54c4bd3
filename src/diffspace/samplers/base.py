"""What every functional sampler shares: state precision, checked denoiser calls, NFE counting, callbacks."""

from __future__ import annotations

import math

import torch

from diffspace.design.grids import check
from diffspace.errors import ConfigError, NumericalError


def state_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """float64 unless asked otherwise (Apple MPS has no float64, so float32 there)."""
    if dtype is not None:
        return dtype
    return torch.float32 if x.device.type == "mps" else torch.float64


class Run:
    """Book-keeping of one sampler call: denoiser calls (checked and counted), progress and callback."""

    def __init__(self, model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args=None, callback=None,
                 disable=None, dtype=None, noise=None, stats: dict | None = None):
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise ConfigError(f"x must be a batched tensor, got {type(x).__name__}")
        self.model = model
        self.dtype = state_dtype(x, dtype)
        self.out_dtype = x.dtype
        self.x = x.to(self.dtype)
        self.sigmas = check(torch.as_tensor(sigmas)).to(device=x.device, dtype=self.dtype)
        self.extra_args = extra_args or {}
        self.callback = callback
        self.disable = disable
        self.noise = noise
        self.stats = stats
        self.nfe = 0
        self.s_in = self.x.new_ones([x.shape[0]])

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def indices(self):
        """range over the steps, with a progress bar when tqdm is installed and not disabled."""
        if self.disable is not False:
            return range(self.steps)
        try:
            from tqdm.auto import trange
        except ImportError:
            return range(self.steps)
        return trange(self.steps, disable=self.disable)

    def denoise(self, x: torch.Tensor, sigma, i: int) -> torch.Tensor:
        """D(x; σ) in the state precision; NaN/Inf stops with the step and σ named."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device)
        out = self.model(x, sigma * self.s_in, **self.extra_args)
        self.nfe += 1
        if out.shape != x.shape:
            raise ConfigError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}: "
                              "latents must have the shape the denoiser expects")
        if not torch.isfinite(out).all():
            raise NumericalError(f"denoiser returned NaN/Inf at step {i} (sigma={float(sigma):.6g}); "
                                 "check the network/checkpoint or raise sigma_min")
        return out.to(self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.randn_like(x).to(x.dtype) if self.noise is not None else torch.randn_like(x)

    def report(self, i: int, x, sigma, sigma_hat, denoised) -> None:
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})

    def done(self, x: torch.Tensor) -> torch.Tensor:
        if self.stats is not None:
            self.stats["nfe"] = self.stats.get("nfe", 0) + self.nfe
        return x.to(self.out_dtype)


def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dσ = (x − D(x; σ))/σ for σ(t)=t, s(t)=1."""
    return (x - denoised) / sigma


def euler_step(x: torch.Tensor, sigma, sigma_next, denoised: torch.Tensor) -> torch.Tensor:
    """x + (σ' − σ)(x − D)/σ written as the convex combination (σ'/σ)x + (1 − σ'/σ)D (exactly D at σ' = 0)."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * denoised


SQRT2_MINUS_1 = math.sqrt(2) - 1
