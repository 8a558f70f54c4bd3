"""Score deviation (Chen et al. 2023): how far a learned denoiser D_θ is from the optimal denoiser D* of its own
training data, along the learned trajectory, along the optimal trajectory from the same noise, and between the
two trajectories. D_θ − D* is σ² times the score error, so these curves are the score deviation up to σ².
"""

from __future__ import annotations

import torch

from diffspace.errors import ConfigError, NumericalError
from diffspace.geometry.trajectory import Trajectory

__all__ = ["denoise_along", "score_deviation"]


def denoise_along(model, x: torch.Tensor, sigmas: torch.Tensor, **extra) -> torch.Tensor:
    """D(x_i; σ_i) for every row of a trajectory x [K, B, …] (float64 state, as the samplers call models)."""
    out = []
    for i in range(len(sigmas)):
        sigma = torch.full((x.shape[1],), float(sigmas[i]), dtype=torch.float64, device=x.device)
        with torch.no_grad():
            d = model(x[i], sigma, **extra)
        if d.shape != x[i].shape:
            raise ConfigError(f"the denoiser returned shape {tuple(d.shape)} for {tuple(x[i].shape)}: the dataset "
                              "and the network must have the same image shape")
        if not torch.isfinite(d).all():
            raise NumericalError(f"the denoiser returned NaN/Inf at step {i} (sigma={float(sigmas[i]):.6g}): check "
                                 "the network/checkpoint")
        out.append(d.to(torch.float64))
    return torch.stack(out)


def _norm(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(*a.shape[:2], -1).norm(dim=-1)


def score_deviation(learned: Trajectory, optimal: Trajectory, net, optimum) -> dict[str, torch.Tensor]:
    """Deviation of the learned denoiser `net` from `optimum` (e.g. denoisers.Empirical of the training data).

    `learned` and `optimal` are runs of the same sampler on the same grid from the same latents, with `net` and
    with `optimum`. Returns [K, B] curves (K steps; 'samples' has K + 1 rows):
      on_learned:     ‖D_θ(x_i) − D*(x_i)‖ on the learned trajectory,
      on_optimal:     ‖D_θ(x*_i) − D*(x*_i)‖ on the optimal trajectory,
      denoised:       ‖D_θ(x_i) − D*(x*_i)‖ between the two denoising trajectories,
      samples:        ‖x_i − x*_i‖ between the two sampling trajectories.
    Costs K evaluations of each denoiser on the other's trajectory.
    """
    if learned.x.shape != optimal.x.shape or not torch.equal(learned.sigma_hat, optimal.sigma_hat):
        raise ConfigError("the learned and the optimal run differ in shape or noise levels: record both with the "
                          "same sampler, grid and latents")
    d_star_on_learned = denoise_along(optimum, learned.x[:-1].to(torch.float64), learned.sigma_hat)
    d_theta_on_optimal = denoise_along(net, optimal.x[:-1].to(torch.float64), optimal.sigma_hat)
    d_theta, d_star = learned.denoised.to(torch.float64), optimal.denoised.to(torch.float64)
    return {
        "on_learned": _norm(d_theta - d_star_on_learned),
        "on_optimal": _norm(d_theta_on_optimal - d_star),
        "denoised": _norm(d_theta - d_star),
        "samples": _norm(learned.x.to(torch.float64) - optimal.x.to(torch.float64)),
    }
