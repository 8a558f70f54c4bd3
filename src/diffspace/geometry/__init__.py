"""The geometric perspective on diffusion sampling (Chen et al. 2023, "A Geometric Perspective on Diffusion
Models"): recorded trajectories and their measurements, optimal sampling as annealed mean shift, score deviation,
memorisation, ODE-Jump and latent interpolation.

    traj = geometry.record("euler", D, latents * sigmas[0], sigmas)   # .x, .denoised, .sigmas, .nfe
    geometry.deviation(traj.x)               # distance of each iterate to the start-end line, [K+1, batch]
    geometry.mean_shift(data, latents * sigmas[0], sigmas)   # = Euler with denoisers.Empirical(data)
"""

from diffspace.geometry.interpolate import interpolate, interpolation_samples, path_norms
from diffspace.geometry.jump import JumpResult, check_jump, jump_outputs, ode_jump, run_with_jump
from diffspace.geometry.meanshift import kde_log_prob, kernel_mean, likelihood_steps, mean_shift, mean_shift_view
from diffspace.geometry.memorize import median_pairwise_distance, memorization, nearest_neighbours
from diffspace.geometry.metrics import (
    deviation,
    distance_to_final,
    explained_variance,
    norms,
    principal_plane,
    tangent_cosine,
)
from diffspace.geometry.scoredev import denoise_along, score_deviation
from diffspace.geometry.trajectory import CountingModel, Trajectory, record

__all__ = [
    "CountingModel", "JumpResult", "Trajectory", "check_jump", "denoise_along", "deviation", "distance_to_final",
    "explained_variance", "interpolate", "interpolation_samples", "jump_outputs", "kde_log_prob", "kernel_mean",
    "likelihood_steps", "mean_shift", "mean_shift_view", "median_pairwise_distance", "memorization",
    "nearest_neighbours", "norms", "ode_jump", "path_norms", "principal_plane", "record", "run_with_jump",
    "score_deviation", "tangent_cosine",
]
