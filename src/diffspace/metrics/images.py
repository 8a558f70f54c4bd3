"""Image sources for feature extraction: uint8 [n, C, H, W] batches from an array, an .npz file, a folder of
images or a `diffspace.data` dataset. Sizes and modes are checked before any feature is computed."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from diffspace.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_CHANNELS = {"L": 1, "RGB": 3, "P": 3}  # palette images are expanded to RGB


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
        self.images = as_nchw_uint8(images, name)
        self.name = name
        self.shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices)]


class FolderSource(ImageSource):
    """A folder (searched recursively, files sorted by relative path as EDM does) of images of one size and mode."""

    def __init__(self, folder: str | os.PathLike):
        from PIL import Image

        root = Path(folder)
        files = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {root}")
        shapes: dict[tuple[int, int, int], Path] = {}
        for p in files:  # header only: PIL reads size and mode without decoding pixels
            try:
                with Image.open(p) as im:
                    mode, (w, h) = im.mode, im.size
            except OSError as e:
                raise DataError(f"cannot read image {p}: {e}") from None
            if mode not in _CHANNELS:
                raise DataError(f"image {p} has mode {mode!r}; only grayscale (L) and RGB images are read, convert it")
            shapes.setdefault((_CHANNELS[mode], h, w), p)
            if len(shapes) > 1:
                (s1, p1), (s2, p2) = shapes.items()
                raise DataError(
                    f"images of mixed sizes or modes in {root}: {p1.name} is {_fmt(s1)}, {p2.name} is {_fmt(s2)}; "
                    "resize/convert them to one size and mode"
                )
        self.files, self.name, self.shape = files, str(root), next(iter(shapes))

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices)):
            with Image.open(self.files[i]) as im:
                a = np.asarray(im.convert("RGB") if im.mode == "P" else im)
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            if a.shape != self.shape:
                raise DataError(f"image {self.files[i]} changed on disk: {_fmt(a.shape)} instead of {_fmt(self.shape)}")
            out[j] = a
        return out


class DatasetSource(ImageSource):
    """A `diffspace.data` dataset (`images_uint8(start, stop)`, `ds[i] -> (image, label)`)."""

    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        self.shape = (int(dataset.num_channels), int(dataset.resolution), int(dataset.resolution))

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            return as_nchw_uint8(self.dataset.images_uint8(int(idx[0]), int(idx[0]) + len(idx)), self.name)
        return np.stack([np.asarray(self.dataset[int(i)][0], dtype=np.uint8) for i in idx])


def _fmt(shape) -> str:
    c, h, w = shape
    return f"{w}x{h} {'gray' if c == 1 else 'RGB' if c == 3 else f'{c}-channel'}"


def as_nchw_uint8(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Accept uint8 NCHW or NHWC with 1 or 3 channels (NHWC when both readings are possible)."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise DataError(f"{name}: images must be uint8 in [0, 255]; got dtype {a.dtype} (convert with to_uint8 first)")
    if a.ndim == 3:  # [n, H, W] grayscale
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{name}: expected images of shape [n, C, H, W] or [n, H, W, C]; got {a.shape}")
    if a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif a.shape[1] not in (1, 3):
        raise DataError(f"{name}: images need 1 or 3 channels (first or last axis); got shape {a.shape}")
    return np.ascontiguousarray(a)


def load_npz_images(path: str | os.PathLike) -> ArraySource:
    """The `images` array of an .npz file (uint8, NHWC or NCHW); never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            images = z["images"] if "images" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as an .npz file of uint8 images: {e}") from None
    if images is None:
        raise DataError(f"{path} has no 'images' array (keys: {', '.join(keys) or 'none'})")
    return ArraySource(images, name=str(path))


def open_images(spec: str | os.PathLike) -> ImageSource:
    """A folder of images, an .npz file with `images`, or anything `diffspace.data.open_dataset` opens."""
    p = Path(spec)
    if p.is_dir():
        return FolderSource(p)
    if p.suffix.lower() == ".npz" and p.is_file():
        return load_npz_images(p)
    try:
        from diffspace.data import open_dataset
    except ImportError:
        raise DataError(f"cannot open images {spec!s}: not a folder or .npz file") from None
    return DatasetSource(open_dataset(str(spec)), name=str(spec))


def select(n: int, num: int | None, seed: int = 0, name: str = "images") -> np.ndarray:
    """Indices of `num` of `n` images: all when num is None or n; else a seeded random subset in sorted order,
    the same subset EDM's `ImageFolderDataset(max_size=num, random_seed=seed)` takes."""
    if num is None or num == n:
        return np.arange(n)
    if num < 2:
        raise DataError(f"--num must be at least 2; got {num}")
    if n < num:
        raise DataError(f"{name} has {n} images, fewer than --num {num}; lower --num or add images")
    idx = np.arange(n)
    np.random.RandomState(seed % (1 << 31)).shuffle(idx)
    return np.sort(idx[:num])
