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


def check_latents(x, what: str = "x") -> torch.Tensor:
    """x must be a batched floating-point tensor (integer or bool latents would give integer results)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise ConfigError(f"{what} must be a batched tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ConfigError(f"{what} has dtype {x.dtype}: latents must be floating point (e.g. {what}.float())")
    return x


def model_dtype(model, x: torch.Tensor) -> torch.dtype:
    """The dtype a sampler calls `model` in (the state stays float64 and results are cast back to it):

    1. the model's own `dtype` attribute when it is a floating torch dtype (diffusers models, and the exact
       denoisers of diffspace.denoisers, which declare float64);
    2. otherwise, for a torch module, the dtype of its first floating-point parameter (a float32 network is
       called in float32, a float16 one in float16, whatever the caller's x);
    3. otherwise the dtype of the x the caller passed (a plain function gets what the caller gave).
    """
    declared = getattr(model, "dtype", None)
    if isinstance(declared, torch.dtype) and declared.is_floating_point:
        return declared
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return x.dtype


def call_model(model, x: torch.Tensor, sigma: torch.Tensor, *, call_dtype: torch.dtype, out_dtype: torch.dtype,
               extra_args: dict, step: int, sigma_shown=None) -> torch.Tensor:
    """model(x, sigma) in `call_dtype`, checked (a tensor of x's shape, floating point, finite), in `out_dtype`."""
    out = model(x.to(call_dtype), sigma.to(call_dtype), **extra_args)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"denoiser returned a {type(out).__name__}, not a tensor: it must return D(x; sigma) "
                          f"as a tensor of shape {tuple(x.shape)}")
    if out.shape != x.shape:
        raise ConfigError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}: "
                          "latents must have the shape the denoiser expects")
    if not out.is_floating_point():
        raise ConfigError(f"denoiser returned dtype {out.dtype}: it must return floating-point values")
    if not torch.isfinite(out).all():
        shown = float(sigma.flatten()[0] if sigma_shown is None else sigma_shown)
        raise NumericalError(f"denoiser returned NaN/Inf at step {step} (sigma={shown:.6g}); "
                             "check the network/checkpoint or raise sigma_min")
    return out.to(out_dtype)


class Run:
    """Book-keeping of one sampler call: denoiser calls (checked and counted), progress and callback."""

    def __init__(self, model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args=None, callback=None,
                 disable=None, dtype=None, noise=None, stats: dict | None = None):
        check_latents(x)
        if extra_args is not None and not isinstance(extra_args, dict):
            raise ConfigError(f"extra_args must be a dict of keyword arguments for the model, got "
                              f"{type(extra_args).__name__}")
        self.model = model
        self.dtype = state_dtype(x, dtype)
        self.out_dtype = x.dtype
        self.call_dtype = model_dtype(model, x)
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
        """D(x; σ), called in the model's dtype (`model_dtype`) and returned in the state precision; a wrong
        shape or dtype is a ConfigError, NaN/Inf a NumericalError naming the step and σ."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device)
        out = call_model(self.model, x, sigma * self.s_in, call_dtype=self.call_dtype, out_dtype=self.dtype,
                         extra_args=self.extra_args, step=i)
        self.nfe += 1
        return out

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
