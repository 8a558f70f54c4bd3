"""Latent interpolation (Chen et al. 2023). Gaussian latents in d dimensions concentrate on the shell of radius
√d (σ_max·√d once scaled): the midpoint of a straight line between two independent latents has norm ≈ √½ of
theirs, inside the shell, where the sampler has never been trained. Spherical and norm-preserving paths stay on
the shell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from diffspace.errors import ConfigError

__all__ = ["METHODS", "interpolate", "interpolation_samples", "path_norms"]

METHODS = ("linear", "spherical", "norm")


def interpolate(z0: torch.Tensor, z1: torch.Tensor, ts: Sequence[float] | torch.Tensor,
                method: str = "spherical") -> torch.Tensor:
    """Points [len(ts), *shape] on a path from z0 (t = 0) to z1 (t = 1), computed in float64.

    linear:    (1 − t) z0 + t z1.
    spherical: sin((1 − t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1, Ω the angle between z0 and z1 (slerp).
    norm:      the linear point rescaled to the norm (1 − t)‖z0‖ + t‖z1‖ (norm-preserving).
    """
    z0, z1 = torch.as_tensor(z0), torch.as_tensor(z1)
    if z0.shape != z1.shape:
        raise ConfigError(f"latents of shapes {tuple(z0.shape)} and {tuple(z1.shape)} cannot be interpolated: "
                          "draw both with the same shape")
    if method not in METHODS:
        raise ConfigError(f"unknown interpolation {method!r}: choose one of {', '.join(METHODS)}")
    a, b = z0.reshape(-1).to(torch.float64), z1.reshape(-1).to(torch.float64)
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        raise ConfigError("an interpolation end point is the zero vector: use latents drawn from N(0, I)")
    t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1, 1)
    if method == "spherical":
        omega = torch.arccos((a @ b / (na * nb)).clamp(-1.0, 1.0))
        if float(omega) < 1e-8:  # (nearly) parallel: slerp degenerates to the straight line
            path = (1 - t) * a + t * b
        else:
            path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    else:
        path = (1 - t) * a + t * b
        if method == "norm":
            lengths = path.norm(dim=1, keepdim=True)
            if (lengths == 0).any():
                raise ConfigError("the straight line between the latents passes through 0 (opposite latents): "
                                  "use method='spherical'")
            path = path * (((1 - t) * na + t * nb) / lengths)
    return path.reshape(len(t), *z0.shape)


def path_norms(path: torch.Tensor) -> torch.Tensor:
    """‖z(t)‖ along a path [T, *shape]: [T]."""
    path = torch.as_tensor(path)
    return path.reshape(len(path), -1).to(torch.float64).norm(dim=1)


def interpolation_samples(sampler: str | Callable, model, z0: torch.Tensor, z1: torch.Tensor, sigmas,
                          ts: Sequence[float], method: str = "spherical", **options) -> torch.Tensor:
    """Samples [len(ts), *shape] generated from the unit-variance latents along a path from z0 to z1 (each path
    point scaled to σ_0 = sigmas[0]); deterministic samplers make the strip a function of the path alone."""
    from diffspace import samplers

    fn = samplers.get(sampler) if isinstance(sampler, str) else sampler
    path = interpolate(z0, z1, ts, method)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return fn(model, path * sigmas[0], sigmas, **options)
