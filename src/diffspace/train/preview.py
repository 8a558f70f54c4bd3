"""Preview images written during training: a grid PNG of EMA samples (images) or a scatter plot (2-D points).

Samples use Heun (Algorithm 1) on the EDM grid with fixed per-sample seeds, so previews of different snapshots
are comparable; they draw nothing from the training RNGs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diffspace.io.checkpoint import atomic_write

__all__ = ["sample", "save_image_grid", "save_scatter", "save_preview"]


@torch.no_grad()
def sample(net, shape: tuple[int, ...], n: int, *, steps: int = 18, label_dim: int = 0, seed: int = 0,
           sigma_min: float = 0.002, sigma_max: float = 80.0, device: str | torch.device = "cpu",
           class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """n samples [n, *shape] (float32) from a preconditioned network with deterministic Heun (seeds seed..seed+n-1).

    Conditional networks get class i mod label_dim for sample i unless `class_labels` is given.
    """
    from diffspace import grids
    from diffspace.samplers import StackedRandom, heun

    sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(net, "sigma_max", math.inf)))
    sigmas = grids.edm(steps, sigma_min, sigma_max)
    if hasattr(net, "round_sigma"):
        sigmas = torch.cat([torch.as_tensor(net.round_sigma(sigmas[:-1])).to(torch.float64), sigmas[-1:]])
    latents = StackedRandom(range(seed, seed + n), device).randn(shape, dtype=torch.float64)
    extra = {}
    if label_dim:
        if class_labels is None:
            class_labels = torch.eye(label_dim, device=device)[torch.arange(n, device=device) % label_dim]
        extra["class_labels"] = class_labels.to(device)
    return heun(net, latents * sigmas[0], sigmas.to(device), extra_args=extra, disable=True).to(torch.float32)


def save_image_grid(images: torch.Tensor, path: str | Path) -> None:
    """Images [n, C, H, W] in [-1, 1] as one PNG grid (ceil(sqrt n) columns), written atomically."""
    import PIL.Image

    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    x = (images.clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i].transpose(1, 2, 0)
    img = PIL.Image.fromarray(grid[:, :, 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def save_scatter(points: torch.Tensor, path: str | Path, title: str = "") -> bool:
    """2-D points [n, 2] as a scatter-plot PNG (matplotlib); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    p = points.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return True


def save_preview(net, path: str | Path, shape: tuple[int, ...], *, is_image: bool, n: int, steps: int = 18,
                 label_dim: int = 0, device="cpu", title: str = "") -> bool:
    """Sample and write a grid (images) or scatter plot (2-D points); False if nothing could be drawn."""
    if n <= 0 or not (is_image or tuple(shape) == (2,)):
        return False
    x = sample(net, tuple(shape), n, steps=steps, label_dim=label_dim, device=device)
    if is_image:
        save_image_grid(x, path)
        return True
    return save_scatter(x, path, title)
