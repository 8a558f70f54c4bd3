"""Discrete-time VP networks (DDPM/DDIM-style ε-, v- or x₀-prediction) as denoisers D(x; σ).

A discrete VP model is trained on timesteps t = 0 … M−1 with a table ᾱ_t (`alphas_cumprod`). Its noisy input is
X = sqrt(ᾱ_t)·y + sqrt(1 − ᾱ_t)·n. In EDM's unscaled coordinates z = X/sqrt(ᾱ) = y + σ·n with

    σ_t = sqrt((1 − ᾱ_t)/ᾱ_t),        X = z/sqrt(1 + σ²),

so the network becomes a denoiser (Karras et al. 2022, VP column; Salimans & Ho 2022 for v):

    ε-prediction:  D(z; σ) = z − σ·ε(X, t(σ))
    v-prediction:  D(z; σ) = z/(1 + σ²) − σ/sqrt(1 + σ²)·v(X, t(σ))
    x₀-prediction: D(z; σ) = x₀(X, t(σ))

The map σ → t(σ) has two modes:

- `timestep="interpolate"` (default): t is interpolated linearly in log σ between the two neighbouring table
  entries, so any σ in [σ_min, σ_max] is accepted and the network sees a fractional timestep; levels that are
  table entries give exactly their integer timestep. `round_sigma` is the identity.
- `timestep="nearest"`: t is the table entry nearest in log σ (as a discrete model was trained), and
  `round_sigma` snaps noise levels to the table, so grids built by diffspace (and churned levels of the `edm`
  sampler) land on the table, as EDM does for its iDDPM models.

Either way the coefficients use the σ actually passed; σ outside the table is clamped to its end timesteps.
`sigma_min`/`sigma_max` are the table's ends, which `diffspace.generate.noise_levels` and EDM's samplers clamp to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffspace.errors import ConfigError

__all__ = ["PREDICTIONS", "DiscreteVP", "sigmas_from_alphas_cumprod"]

PREDICTIONS = ("epsilon", "v_prediction", "sample")
_TIMESTEP_MODES = ("interpolate", "nearest")


def sigmas_from_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) in float64, after checking that ᾱ is a strictly decreasing table in (0, 1]."""
    a = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).reshape(-1)
    if a.numel() < 2:
        raise ConfigError(f"the alphas_cumprod table has {a.numel()} entries: a discrete VP model needs at least 2")
    if not torch.isfinite(a).all() or bool((a <= 0).any()) or bool((a > 1).any()):
        bad = a[~(torch.isfinite(a) & (a > 0) & (a <= 1))][0].item()
        raise ConfigError(f"alphas_cumprod holds {bad:g}: every entry must lie in (0, 1] (zero terminal SNR "
                          "gives sigma = inf, which no sampler can start from)")
    diff = a[1:] - a[:-1]
    if bool((diff >= 0).any()):
        i = int(torch.nonzero(diff >= 0)[0])
        raise ConfigError(f"alphas_cumprod is not strictly decreasing: entry {i + 1} ({a[i + 1].item():.6g}) >= "
                          f"entry {i} ({a[i].item():.6g}); pass the table in timestep order t = 0 … M-1")
    return ((1 - a) / a).sqrt()


class DiscreteVP(nn.Module):
    """D(z; σ) of a discrete-time VP network `model(X, t, class_labels=…) -> ε | v | x₀`.

    `model` may be any callable (an nn.Module is registered as a submodule); it is called with X in `dtype`
    (float32 by default), the timesteps t as a float tensor of shape [batch] and, for conditional models
    (`label_dim > 0`), the `class_labels` it was given. `img_shape` = (C, H, W) of one sample, when known.
    """

    def __init__(self, model: Callable, alphas_cumprod, *, prediction: str = "epsilon",
                 timestep: str = "interpolate", label_dim: int = 0, img_shape: tuple[int, int, int] | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction type {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if timestep not in _TIMESTEP_MODES:
            raise ConfigError(f"unknown timestep mode {timestep!r}: choose 'interpolate' or 'nearest'")
        self.model = model
        self.prediction, self.timestep, self.label_dim, self._dtype = prediction, timestep, int(label_dim), dtype
        # The table stays float64 on the CPU whatever .to() does to the module (the σ -> t map needs its precision).
        self.sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
        self.log_sigmas = self.sigmas.log()
        self.num_timesteps = len(self.sigmas)
        if img_shape is not None:
            self.img_channels, self.img_resolution = int(img_shape[0]), int(img_shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model is called in: its parameters' (after .to(...)), else the constructor's `dtype`."""
        param = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        return param.dtype if param is not None else self._dtype

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    # -- σ <-> t -------------------------------------------------------------------------------------------

    def sigma_to_t(self, sigma, mode: str | None = None) -> torch.Tensor:
        """Timesteps (float64) of noise levels: nearest table entry in log σ, or linear interpolation in log σ."""
        mode = mode or self.timestep
        log_sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64).log()
        table = self.log_sigmas
        if mode == "nearest":
            return (log_sigma.reshape(-1, 1) - table).abs().argmin(1).reshape(log_sigma.shape).to(torch.float64)
        low = (torch.searchsorted(table, log_sigma.contiguous(), right=True) - 1).clamp(0, len(table) - 2)
        w = ((log_sigma - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
        return low.to(torch.float64) + w

    def t_to_sigma(self, t) -> torch.Tensor:
        """Noise levels (float64) of timesteps; fractional t interpolates log σ linearly (inverse of sigma_to_t)."""
        t = torch.as_tensor(t).detach().to("cpu", torch.float64).clamp(0, self.num_timesteps - 1)
        low = t.floor().to(torch.long).clamp(max=self.num_timesteps - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def timesteps_to_sigmas(self, timesteps, append_zero: bool = True) -> torch.Tensor:
        """A diffspace grid (decreasing float64 σ, + a final 0) from a sampler's integer timesteps, e.g. the
        `timesteps` of a diffusers scheduler after `set_timesteps(N)`."""
        t = torch.as_tensor(timesteps).to("cpu", torch.long).reshape(-1)
        if t.numel() == 0 or bool((t < 0).any()) or bool((t >= self.num_timesteps).any()):
            raise ConfigError(f"timesteps must lie in 0..{self.num_timesteps - 1}, got {t.tolist()[:8]}")
        sig = self.sigmas[t]
        return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig

    def round_sigma(self, sigma):
        """Nearest table level (mode 'nearest'); the identity (mode 'interpolate')."""
        sigma = torch.as_tensor(sigma)
        if self.timestep != "nearest":
            return sigma
        t = self.sigma_to_t(sigma, "nearest").to(torch.long)
        return self.sigmas[t].to(sigma.device, sigma.dtype if sigma.is_floating_point() else torch.float64)

    # -- the denoiser ------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None, **model_kwargs):
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]):
            raise ConfigError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}: pass one per sample")
        sigma = sigma.expand(x.shape[0])
        t = self.sigma_to_t(sigma).to(x.device)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        z = x.to(torch.float64)
        scale = 1 / (1 + s**2).sqrt()  # sqrt(ᾱ)
        if self.label_dim:
            model_kwargs["class_labels"] = class_labels
        out = self.model((z * scale).to(self.dtype), t.to(self.dtype), **model_kwargs)
        if out.shape != x.shape:
            raise ConfigError(f"the wrapped model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        out = out.to(torch.float64)
        if self.prediction == "epsilon":
            denoised = z - s * out
        elif self.prediction == "v_prediction":
            denoised = z * scale**2 - s * scale * out
        else:
            denoised = out
        return denoised.to(x.dtype)
