"""Training losses of EDM's Table 1: VP, VE and EDM (Karras et al. 2022).

Each loss draws one noise level σ per example from its training distribution, noises the (augmented) data
y + σ·n and returns the per-element weighted error λ(σ)·(D(y + σ·n; σ) − y)². The caller sums it and divides by
the per-process batch, as EDM does, so that the gradient is an average over examples.

Randomness comes from an explicit `generator` (or pre-drawn `sigma`/`noise`), so the training loop can make every
example's σ and noise a function of the seed, the step and the example's position in the global batch alone.
"""

from __future__ import annotations

import math

import torch

from diffspace.design.schedules import VPSchedule
from diffspace.errors import ConfigError

__all__ = ["Loss", "VPLoss", "VELoss", "EDMLoss", "LOSSES", "build_loss"]


class Loss:
    """Shared part: draw σ and n, noise the data, evaluate the denoiser, weight the squared error."""

    name = "loss"

    def __init__(self, **config):
        self.init_kwargs = dict(config)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """n noise levels [n] (float32) from the training distribution."""
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Loss weight λ(σ)."""
        raise NotImplementedError

    def draw(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ [B], unit noise n̂ shaped like `images`) drawn in EDM's order: σ first, then the noise."""
        gen_device = generator.device if generator is not None else images.device
        sigma = self.sample_sigma(images.shape[0], generator, gen_device)
        noise = torch.randn(images.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return sigma.to(images.device), noise.to(images.device)

    def __call__(self, net, images: torch.Tensor, labels: torch.Tensor | None = None,
                 augment_labels: torch.Tensor | None = None, *, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-element loss λ(σ)·(D(y + σn̂; σ) − y)², shaped like `images`.

        `images` are the (already augmented) clean data y; `noise` is unit-variance (scaled by σ here).
        `augment_labels` are passed to the network only when given.
        """
        if (sigma is None) != (noise is None):
            raise ConfigError("pass both sigma and noise, or neither (then they are drawn from the generator)")
        if sigma is None:
            sigma, noise = self.draw(images, generator)
        sigma = sigma.to(device=images.device, dtype=torch.float32).reshape(-1, *([1] * (images.ndim - 1)))
        if sigma.shape[0] != images.shape[0] or noise.shape != images.shape:
            raise ConfigError(f"sigma {tuple(sigma.shape)} / noise {tuple(noise.shape)} do not match the batch "
                              f"{tuple(images.shape)}: draw one sigma per example and noise shaped like the data")
        y = images
        kwargs = {} if augment_labels is None else {"augment_labels": augment_labels}
        D_yn = net(y + noise.to(y.dtype) * sigma, sigma.flatten(), labels, **kwargs)
        return self.weight(sigma) * (D_yn - y) ** 2

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.init_kwargs.items())
        return f"{type(self).__name__}({args})"


class VPLoss(Loss):
    """VP: σ = σ_VP(t), t ~ U(ε_t, 1); λ(σ) = 1/σ²."""

    name = "vp"

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        if not 0 < epsilon_t < 1:
            raise ConfigError(f"VP loss epsilon_t={epsilon_t} must lie in (0, 1)")
        super().__init__(beta_d=beta_d, beta_min=beta_min, epsilon_t=epsilon_t)
        self.schedule = VPSchedule(beta_d, beta_min)
        self.epsilon_t = float(epsilon_t)

    def sample_sigma(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, device=device)
        return self.schedule.sigma(1 + u * (self.epsilon_t - 1)).to(torch.float32)

    def weight(self, sigma):
        return 1 / sigma**2


class VELoss(Loss):
    """VE: ln σ ~ U(ln σ_min, ln σ_max); λ(σ) = 1/σ²."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"VE loss needs 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample_sigma(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, device=device)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

    def weight(self, sigma):
        return 1 / sigma**2


class EDMLoss(Loss):
    """EDM: ln σ ~ N(P_mean, P_std²); λ(σ) = (σ² + σ_data²)/(σ·σ_data)², i.e. 1/c_out(σ)²."""

    name = "edm"

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if not (P_std > 0 and sigma_data > 0 and math.isfinite(P_mean)):
            raise ConfigError(f"EDM loss needs P_std > 0, sigma_data > 0 and a finite P_mean, got "
                              f"P_mean={P_mean}, P_std={P_std}, sigma_data={sigma_data}")
        super().__init__(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def sample_sigma(self, n, generator=None, device="cpu"):
        xi = torch.randn(n, generator=generator, device=device)
        return (xi * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


LOSSES: dict[str, type[Loss]] = {"vp": VPLoss, "ve": VELoss, "edm": EDMLoss}


def build_loss(name: str, **kwargs) -> Loss:
    """Loss by Table-1 name ('vp', 've', 'edm'); iDDPM has no training loss."""
    if name not in LOSSES:
        raise ConfigError(f"no training loss {name!r}: choose one of {', '.join(LOSSES)}"
                          + (" (iDDPM is a sampling-only family)" if name == "iddpm" else ""))
    return LOSSES[name](**kwargs)
