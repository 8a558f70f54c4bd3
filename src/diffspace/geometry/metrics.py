"""Shape measurements of sampling and denoising trajectories (Chen et al. 2023, "A Geometric Perspective on
Diffusion Models", with the definitions of the authors' analysis code).

Every function takes one trajectory [steps, *event] or a batch of them [steps, batch, *event] and computes in
float64. A 2-D tensor is read as one trajectory of vectors; pass `batched=False` for one trajectory of images.
"""

from __future__ import annotations

import torch

from diffspace.errors import ConfigError, NumericalError

__all__ = ["deviation", "distance_to_final", "explained_variance", "norms", "principal_plane", "tangent_cosine"]


def _rows(points: torch.Tensor, batched: bool | None, what: str = "trajectory") -> tuple[torch.Tensor, bool]:
    """[steps, batch, d] float64 view of `points` and whether the input had a batch dimension."""
    points = torch.as_tensor(points)
    if points.ndim < 2:
        raise ConfigError(f"{what} has shape {tuple(points.shape)}: expected [steps, *event] or [steps, batch, *event]")
    if batched is None:
        batched = points.ndim >= 3
    if not batched:
        points = points.unsqueeze(1)
    elif points.ndim < 3:
        raise ConfigError(f"{what} has shape {tuple(points.shape)} but batched=True needs [steps, batch, *event]")
    return points.reshape(points.shape[0], points.shape[1], -1).to(torch.float64), batched


def _out(t: torch.Tensor, batched: bool) -> torch.Tensor:
    return t if batched else t[:, 0]


def _need_points(points: torch.Tensor, n: int, what: str) -> None:
    if points.shape[0] < n:
        raise ConfigError(f"{what} has {points.shape[0]} point(s): it needs at least {n} (record a run of >= "
                          f"{n - 1} step(s))")


def deviation(points: torch.Tensor, *, batched: bool | None = None) -> torch.Tensor:
    """Distance of every point of a trajectory to the straight line through its first and last point.

    dev(a) = ‖(c − a) − ⟨c − a, u⟩u‖ with start b, end c and u = (c − b)/‖c − b‖ (zero at both ends).
    Returns [steps] or [steps, batch].
    """
    p, batched = _rows(points, batched)
    _need_points(p, 2, "trajectory")
    start, end = p[0], p[-1]
    chord = end - start
    length = chord.norm(dim=-1, keepdim=True)
    if (length == 0).any():
        raise NumericalError("a trajectory ends where it starts: its deviation from the start-end line is undefined")
    u = chord / length
    to_end = end[None] - p
    perp = to_end - (to_end * u[None]).sum(-1, keepdim=True) * u[None]
    return _out(perp.norm(dim=-1), batched)


def distance_to_final(points: torch.Tensor, final: torch.Tensor | None = None, *,
                      batched: bool | None = None) -> torch.Tensor:
    """‖p_i − final‖ for every point (final: the trajectory's last point by default; e.g. the sample for a
    denoising trajectory). Returns [steps] or [steps, batch]."""
    p, batched = _rows(points, batched)
    _need_points(p, 1, "trajectory")
    f = p[-1] if final is None else torch.as_tensor(final).reshape(p.shape[1], -1).to(torch.float64)
    return _out((p - f[None]).norm(dim=-1), batched)


def norms(points: torch.Tensor, *, batched: bool | None = None) -> torch.Tensor:
    """‖p_i‖ for every point: [steps] or [steps, batch]."""
    p, batched = _rows(points, batched)
    return _out(p.norm(dim=-1), batched)


def tangent_cosine(x: torch.Tensor, denoised: torch.Tensor, *, batched: bool | None = None) -> torch.Tensor:
    """cos(d_i, x_i − x_end) with the ODE direction d_i = (x_i − D_i)/σ_i, for i = 0..K−1.

    x: the sampling trajectory [K+1, …] ending with the sample; denoised: [K, …]. The positive factor 1/σ_i does
    not change the angle. Near 1: the tangent points at the final sample.
    """
    p, batched = _rows(x, batched, "sampling trajectory")
    d, _ = _rows(denoised, batched, "denoising trajectory")
    _need_points(p, 2, "sampling trajectory")
    if d.shape[0] != p.shape[0] - 1 or d.shape[1:] != p.shape[1:]:
        raise ConfigError(f"denoised has {d.shape[0]} rows for a sampling trajectory of {p.shape[0]} points: "
                          "pass the K denoiser outputs of a K-step run")
    tangent = p[:-1] - d
    to_end = p[:-1] - p[-1][None]
    cos = (tangent * to_end).sum(-1) / (tangent.norm(dim=-1) * to_end.norm(dim=-1))
    return _out(cos, batched)


def _centred_svd(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values [batch, r] and right singular vectors [batch, r, d] of each centred trajectory."""
    centred = (p - p.mean(0, keepdim=True)).transpose(0, 1)  # [batch, steps, d]
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return s, vh


def explained_variance(points: torch.Tensor, k: int = 3, *, batched: bool | None = None) -> torch.Tensor:
    """Fraction of each trajectory's variance in its top-1 … top-k principal components (rows = iterates).

    Returns cumulative fractions [k] or [batch, k]; 1 in column j means the trajectory lies in a (j+1)-D affine
    subspace.
    """
    p, batched = _rows(points, batched)
    _need_points(p, 2, "trajectory")
    if k < 1:
        raise ConfigError(f"k={k} must be >= 1")
    s, _ = _centred_svd(p)
    var = s**2
    total = var.sum(-1, keepdim=True)
    if (total == 0).any():
        raise NumericalError("a trajectory has zero variance (all points equal): no principal components")
    frac = var.cumsum(-1) / total
    if frac.shape[-1] < k:  # fewer points or dimensions than k: the rest is already 1
        frac = torch.cat([frac, frac[..., -1:].expand(*frac.shape[:-1], k - frac.shape[-1])], -1)
    frac = frac[..., :k].clamp(max=1.0)
    return frac if batched else frac[0]


def principal_plane(points: torch.Tensor, *, batched: bool | None = None) -> torch.Tensor:
    """Coordinates [steps, 2] (or [steps, batch, 2]) of each trajectory in the plane of its own top-2 principal
    components, centred on its mean; the sign of each axis makes the start point's coordinates positive."""
    p, batched = _rows(points, batched)
    _need_points(p, 2, "trajectory")
    _, vh = _centred_svd(p)
    axes = vh[:, :2]  # [batch, 2|1, d]
    if axes.shape[1] < 2:
        axes = torch.cat([axes, torch.zeros_like(axes)], 1)
    centred = p - p.mean(0, keepdim=True)
    coords = torch.einsum("sbd,bkd->sbk", centred, axes)
    sign = torch.where(coords[0] < 0, -1.0, 1.0).to(coords.dtype)
    return _out(coords * sign[None], batched)
