"""Figures of the geometric analysis (matplotlib, Agg backend, small PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["curves", "image_grid", "projections", "save"]

COLORS = {"sampling": "tab:red", "denoising": "tab:blue", "optimal": "tab:green", "learned": "tab:purple",
          "linear": "tab:orange", "spherical": "tab:blue", "norm": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.dpi": 100, "axes.grid": True,
                         "grid.alpha": 0.3, "legend.fontsize": 7})
    return plt


def save(fig, path: Path) -> None:
    """PNG with a tight bounding box, then closed."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)


def curves(panels: list[dict], path: Path, *, width: float = 3.6, height: float = 2.7) -> None:
    """One row of panels; each panel: {'title', 'xlabel', 'ylabel', 'logy', 'series': [{'label', 'x', 'band'
    (mean/q10/q90 dict) or 'y', 'color', 'style'}], 'hlines': [(y, label)]}. Bands are shaded 10–90% ranges."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s in panel["series"]:
            color = s.get("color") or COLORS.get(s["label"].split()[0])
            if "band" in s:
                b = s["band"]
                ax.plot(s["x"], b["mean"], s.get("style", "-"), color=color, label=s["label"], lw=1.3, ms=3)
                ax.fill_between(s["x"], b["q10"], b["q90"], color=color, alpha=0.2, lw=0)
            else:
                ax.plot(s["x"], s["y"], s.get("style", "-o"), color=color, label=s["label"], lw=1.3, ms=3)
        for y, label in panel.get("hlines", []):
            ax.axhline(y, color="gray", ls="--", lw=0.8, label=label)
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.set_title(panel.get("title", ""))
        ax.set_xlabel(panel.get("xlabel", "step i"))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.legend(loc=panel.get("legend", "best"))
    fig.tight_layout()
    save(fig, path)


def projections(panels: list[tuple[str, str, np.ndarray]], path: Path) -> None:
    """Trajectories each in its own principal plane: per panel (title, 'sampling' | 'denoising', coordinates
    [steps, n, 2]); the start is marked with a circle, the end with a cross."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.0), squeeze=False)
    for ax, (title, kind, xs) in zip(axes[0], panels):
        for j in range(xs.shape[1]):
            ax.plot(xs[:, j, 0], xs[:, j, 1], "-", color=COLORS[kind], lw=1, alpha=0.7)
            ax.plot(xs[0, j, 0], xs[0, j, 1], "o", color=COLORS[kind], ms=3)
            ax.plot(xs[-1, j, 0], xs[-1, j, 1], "kx", ms=4)
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.tight_layout()
    save(fig, path)


def image_grid(rows: list[tuple[str, np.ndarray]], path: Path, *, col_labels: list[str] | None = None,
               cell: float = 0.55) -> None:
    """Rows of images (label, uint8 [n, C, H, W]) as one figure; gray for one channel."""
    plt = _plt()
    cols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell * cols + 1.2, cell * len(rows) + 0.3), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                img = np.asarray(imgs[c]).transpose(1, 2, 0)
                ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
            if r == 0 and col_labels and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=6)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.08, left=0.2)
    save(fig, path)
