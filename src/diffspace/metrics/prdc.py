"""Precision, recall, density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
generative models"), with k-nearest-neighbour balls (k = 5) in feature space.

With real features X (n rows), generated features Y (m rows) and r_k(z) the distance from z to its k-th nearest
neighbour within its own set (itself excluded):

    precision = 1/m Σⱼ 1[∃i: |Yⱼ − Xᵢ| < r_k(Xᵢ)]
    recall    = 1/n Σᵢ 1[∃j: |Xᵢ − Yⱼ| < r_k(Yⱼ)]
    density   = 1/(k m) Σⱼ Σᵢ 1[|Yⱼ − Xᵢ| < r_k(Xᵢ)]
    coverage  = 1/n Σᵢ 1[minⱼ |Xᵢ − Yⱼ| < r_k(Xᵢ)]

Distances are computed in float64 in row blocks, so memory stays O(block · n) for any set size.
"""

from __future__ import annotations

import numpy as np
import torch

from diffspace.errors import DataError

BLOCK = 1024


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of a and b (float64, clamped at 0 before the root)."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0).sqrt_()


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], BLOCK):
        d = _dist(x[s : s + BLOCK], x)
        out[s : s + BLOCK] = d.kthvalue(k + 1, dim=1).values  # the smallest is the row itself
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, device: torch.device | str | None = None) -> dict[str, float]:
    """Precision, recall, density, coverage of `fake` [m, d] with respect to `real` [n, d]."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"PRDC needs two feature sets of the same dimension; got {real.shape} and {fake.shape}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise DataError(f"PRDC with k={k} needs more than {k} samples per set; got {real.shape[0]} and {fake.shape[0]}")
    dev = torch.device(device or "cpu")
    if dev.type == "mps":  # no float64 on Apple GPUs
        dev = torch.device("cpu")
    x = torch.as_tensor(np.asarray(real), dtype=torch.float64, device=dev)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float64, device=dev)
    rx, ry = knn_radii(x, k), knn_radii(y, k)

    in_real_ball = torch.zeros(y.shape[0], dtype=torch.bool, device=dev)  # Yⱼ inside some real ball
    count = torch.zeros(y.shape[0], dtype=torch.float64, device=dev)  # number of real balls containing Yⱼ
    covered = torch.zeros(x.shape[0], dtype=torch.bool, device=dev)  # some Yⱼ inside Xᵢ's ball
    recalled = torch.zeros(x.shape[0], dtype=torch.bool, device=dev)  # Xᵢ inside some fake ball
    for s in range(0, x.shape[0], BLOCK):
        d = _dist(x[s : s + BLOCK], y)  # [block, m]
        inside = d < rx[s : s + BLOCK, None]
        in_real_ball |= inside.any(0)
        count += inside.sum(0)
        covered[s : s + BLOCK] = inside.any(1)
        recalled[s : s + BLOCK] = (d < ry[None, :]).any(1)
    return {
        "precision": in_real_ball.double().mean().item(),
        "recall": recalled.double().mean().item(),
        "density": (count.mean() / k).item(),
        "coverage": covered.double().mean().item(),
    }
