"""Image sources for feature extraction: uint8 [n, C, H, W] batches, read by index from an in-memory array or
from anything `diffspace.data.open_dataset` opens (image folder, EDM zip, .npz, built-in names). Every image of a
file-backed dataset is checked for size and mode before any feature is computed."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from diffspace.errors import DataError


class ImageSource:
    """n images of one shape (C, H, W), read as uint8 arrays by index."""

    name: str
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [len(indices), C, H, W]."""
        raise NotImplementedError

    def fingerprint(self, indices: np.ndarray) -> str:
        """Identifies the selection (name, shape, indices, first and last image) for resuming a feature cache."""
        h = hashlib.sha256(f"{self.name}|{self.shape}|{len(self)}".encode())
        h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
        if len(indices):
            h.update(self.read(indices[[0, -1]]).tobytes())
        return h.hexdigest()


class ArraySource(ImageSource):
    """Images held in memory, NCHW uint8."""

    def __init__(self, images: np.ndarray, name: str = "array"):
        from diffspace.data.formats import to_nchw

        self.images = np.ascontiguousarray(to_nchw(np.asarray(images), name))
        self.name = name
        self.shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices)]


class DatasetSource(ImageSource):
    """A `diffspace.data` dataset (`images_uint8(start, stop)`, `ds[i] -> (image, label)`)."""

    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        self.shape = tuple(int(v) for v in dataset.image_shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # read contiguous runs in one call each
        runs = [self.dataset.images_uint8(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, breaks) if len(r)]
        return np.concatenate(runs) if runs else np.zeros((0, *self.shape), np.uint8)


def open_images(spec: str | os.PathLike) -> ImageSource:
    """Images from `diffspace.data.open_dataset(spec)`, every file checked up front (`validate`)."""
    from diffspace.data import open_dataset

    ds = open_dataset(str(spec))
    if not getattr(ds, "is_image", True):
        raise DataError(f"{spec} is not an image dataset; FID needs images")
    if hasattr(ds, "validate"):  # decode every file once: mixed sizes/modes fail here, before any output
        ds.validate()
    return DatasetSource(ds, name=str(spec))


def select(n: int, num: int | None, seed: int = 0, name: str = "images") -> np.ndarray:
    """Indices of `num` of `n` images: all when num is None or n; else a seeded random subset in sorted order,
    the same subset EDM's `ImageFolderDataset(max_size=num, random_seed=seed)` takes."""
    if n < 2:
        raise DataError(f"{name} has {n} image(s); statistics need at least 2")
    if num is None or num == n:
        return np.arange(n)
    if num < 2:
        raise DataError(f"--num must be at least 2; got {num}")
    if n < num:
        raise DataError(f"{name} has {n} images, fewer than --num {num}; lower --num or add images")
    idx = np.arange(n)
    np.random.RandomState(seed % (1 << 31)).shuffle(idx)
    return np.sort(idx[:num])
