"""Guidance as a denoiser: D_w(x; σ) = D_ref(x; σ) + w·(D(x; σ) − D_ref(x; σ)).

- Classifier-free guidance (Ho & Salimans 2022): D_ref is the same class-conditional network given the null
  label (the all-zero label vector, which is what EDM's label dropout trains). Both branches run as one forward
  of a doubled batch [x; x] with labels [c; 0] (`batch=False`: two forwards).
- Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): D_ref is a
  second, weaker network (fewer parameters or less training) with the same image shape and labels; two forwards.

The result is an ordinary denoiser, so every sampler, grid and analysis tool takes it unchanged. Cost: every
denoiser call evaluates a network twice (`nfe_factor = 2`), so a sampler reporting NFE n costs 2n network
evaluations. Counters since construction or the last `reset_counts()`: `calls` (denoiser calls, what a
sampler's NFE counts), `network_evals` (= 2·calls, network evaluations per sample) and `forwards` (network
forward passes: 1 per call when classifier-free guidance batches both branches, else 2).

The combination is written so that w = 0 returns D_ref and w = 1 returns D bit for bit (the formula is evaluated
from the nearer end: D_ref + w·Δ for w < ½, D + (w − 1)·Δ otherwise).
"""

from __future__ import annotations

import math
import threading

import torch

from diffspace.errors import ConfigError

__all__ = ["Guided", "combine"]


def combine(d_ref: torch.Tensor, d: torch.Tensor, w: float) -> torch.Tensor:
    """D_ref + w·(D − D_ref), exact at w = 0 and w = 1."""
    delta = d - d_ref
    return d_ref + w * delta if w < 0.5 else d + (w - 1) * delta


def _shape(net) -> tuple[int, ...] | None:
    from diffspace.generate import image_shape

    try:
        return image_shape(net)
    except ConfigError:
        return None


class Guided:
    """Classifier-free guidance (`ref=None`) or autoguidance (`ref` = the weaker network) with weight `weight`.

    Attributes the samplers and `diffspace generate` read (label_dim, image shape, round_sigma) are the guided
    network's; sigma_min/sigma_max are the intersection of both networks' ranges.
    """

    nfe_factor = 2

    def __init__(self, net, weight: float, ref=None, *, batch: bool = True):
        weight = float(weight)
        if not math.isfinite(weight):
            raise ConfigError(f"guidance weight {weight} must be a finite number (1 = no guidance)")
        self.net, self.ref, self.weight, self.batch = net, ref, weight, bool(batch)
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)
        if ref is None:
            if self.label_dim == 0:
                raise ConfigError("classifier-free guidance needs a class-conditional network (this one has no "
                                  "labels): pass a weaker guiding network for autoguidance instead")
        else:
            ref_dim = int(getattr(ref, "label_dim", 0) or 0)
            if ref_dim != self.label_dim:
                raise ConfigError(f"the guiding network has label_dim {ref_dim} but the main network has "
                                  f"{self.label_dim}: both must be trained on the same classes")
            a, b = _shape(net), _shape(ref)
            if a is not None and b is not None and a != b:
                raise ConfigError(f"the guiding network makes samples of shape {list(b)} but the main network "
                                  f"{list(a)}: both must work on the same images")
        self._lock = threading.Lock()
        self.reset_counts()

    def reset_counts(self) -> None:
        self.calls = self.forwards = 0

    @property
    def network_evals(self) -> int:
        return self.nfe_factor * self.calls

    def _count(self, forwards: int) -> None:
        with self._lock:
            self.calls += 1
            self.forwards += forwards

    def __getattr__(self, name):  # img_resolution, img_channels, model, init_kwargs, ... of the guided network
        if name in ("net", "ref"):
            raise AttributeError(name)
        return getattr(self.net, name)

    @property
    def sigma_min(self) -> float:
        return max(float(getattr(m, "sigma_min", 0.0)) for m in (self.net, self.ref) if m is not None)

    @property
    def sigma_max(self) -> float:
        return min(float(getattr(m, "sigma_max", math.inf)) for m in (self.net, self.ref) if m is not None)

    def round_sigma(self, sigma):
        fn = getattr(self.net, "round_sigma", None)
        return fn(sigma) if fn is not None else torch.as_tensor(sigma)

    def __call__(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        b = x.shape[0]
        if self.ref is not None:  # autoguidance: two networks, two forwards
            d = self.net(x, sigma, class_labels=class_labels, **kwargs)
            d_ref = self.ref(x, sigma, class_labels=class_labels, **kwargs)
            self._count(2)
        else:  # classifier-free guidance: the same network with the null label
            labels = torch.zeros(b, self.label_dim, device=x.device) if class_labels is None else \
                torch.as_tensor(class_labels, device=x.device).reshape(-1, self.label_dim).expand(b, -1)
            null = torch.zeros_like(labels)
            if self.batch:
                sig = torch.as_tensor(sigma, device=x.device).reshape(-1)
                sig = sig.expand(b) if sig.numel() == 1 else sig
                both = self.net(torch.cat([x, x]), torch.cat([sig, sig]), class_labels=torch.cat([labels, null]),
                                **kwargs)
                d, d_ref = both[:b], both[b:]
                self._count(1)
            else:
                d = self.net(x, sigma, class_labels=labels, **kwargs)
                d_ref = self.net(x, sigma, class_labels=null, **kwargs)
                self._count(2)
        return combine(d_ref, d, self.weight)
