"""Image datasets with the protocol of NVlabs/edm's `training/dataset.py`.

Items are `(image, label)`: `image` uint8 `[C, H, W]`, `label` float32 one-hot `[label_dim]` (or the stored
float vector, or empty `[0]` without labels). `max_size` keeps a seeded random subset (sorted) and `xflip`
appends mirrored copies, both as in EDM. `to_float` maps uint8 to [-1, 1] by `x / 127.5 - 1`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from diffspace.data.formats import image_error, is_hidden
from diffspace.errors import DataError

TRANSFORMS = ("none", "pad", "resize", "center-crop")
_GRAY_MODES = {"1": 1, "L": 1, "LA": 1}
_COLOR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 tensor in [-1, 1] (`x / 127.5 - 1`, EDM's training scaling)."""
    return torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).to(
        torch.float32
    ) / 127.5 - 1


def mode_channels(mode: str) -> int | None:
    """Channels a PIL mode maps to (1 gray, 3 colour; alpha dropped), None for 16-bit/float modes."""
    if mode in _GRAY_MODES:
        return 1
    return 3 if mode in _COLOR_MODES else None


# ----------------------------------------------------------------------------------------------------------
# Resolution transforms on uint8 batches [n, C, H, W].


def lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Resampling weights `[n_out, n_in]` of Pillow's Lanczos-3 filter (same support, centres and
    normalisation as `Image.resize(..., LANCZOS)`)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)  # widen the kernel when shrinking
    support = 3.0 * fscale
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = (np.arange(lo, hi) - centre + 0.5) / fscale
        k = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
        w[i, lo:hi] = k / k.sum()
    return w


def resize_lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos-3 resize of a uint8 batch `[..., H, W]` as two separable passes (horizontal then vertical,
    each rounded to uint8 like Pillow); equals Pillow's result up to ±1 from its fixed-point weights."""
    x = images.astype(np.float32)
    if x.shape[-1] != width:
        x = np.floor(np.clip(x @ lanczos_matrix(x.shape[-1], width).T.astype(np.float32) + 0.5, 0, 255))
    if x.shape[-2] != height:
        wy = lanczos_matrix(x.shape[-2], height).astype(np.float32)
        x = np.clip(np.swapaxes(np.swapaxes(x, -1, -2) @ wy.T, -1, -2) + 0.5, 0, 255)
    return x.astype(np.uint8)  # truncation of the clipped x + 0.5 = round half up


def transform_images(images: np.ndarray, resolution: int | None, transform: str, what: str) -> np.ndarray:
    """Bring a uint8 batch `[n, C, H, W]` to `resolution`² with `transform`.

    `pad`: zero padding, centred (28 -> 32 adds 2 rows/columns of black = -1 on each side); `resize`:
    Lanczos-3 (Pillow's filter, as in EDM's dataset_tool) to `resolution`², aspect ratio not kept;
    `center-crop`: crop the centred square of side min(H, W), then Lanczos-resize; `none`: the images must
    already have that size. `what` names the source in error messages.
    """
    if transform not in TRANSFORMS:
        raise DataError(f"unknown transform {transform!r}: choose one of {', '.join(TRANSFORMS)}")
    n, c, h, w = images.shape
    if resolution is None:
        if transform != "none":
            raise DataError(f"transform {transform!r} needs a target resolution: give one (--resolution N)")
        if h != w:
            raise DataError(f"{what}: images are {w}x{h}, not square: give a resolution and the transform "
                            "center-crop or resize")
        return images
    if resolution <= 0:
        raise DataError(f"resolution must be positive, got {resolution}")
    if (h, w) == (resolution, resolution):
        return images
    if transform == "none":
        raise DataError(f"{what}: images are {w}x{h}, not {resolution}x{resolution}: choose a transform "
                        "(pad, resize or center-crop)")
    if transform == "pad":
        if h > resolution or w > resolution:
            raise DataError(f"{what}: cannot pad {w}x{h} images to {resolution}x{resolution}: use the "
                            "transform resize or center-crop")
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out = np.zeros((n, c, resolution, resolution), dtype=np.uint8)
        out[:, :, top:top + h, left:left + w] = images
        return out
    if transform == "center-crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        images = images[:, :, top:top + s, left:left + s]
        if s == resolution:
            return np.ascontiguousarray(images)
    return resize_lanczos(images, resolution, resolution)


# ----------------------------------------------------------------------------------------------------------
# Base class.


class ImageDataset(torch.utils.data.Dataset):
    """Abstract image dataset; subclasses implement `_load(raw_indices) -> uint8 [n, C, H, W]`."""

    is_image = True

    def __init__(self, name: str, num_raw: int, image_shape: tuple[int, int, int],
                 raw_labels: np.ndarray | None, *, max_size: int | None = None, use_labels: bool = False,
                 xflip: bool = False, random_seed: int = 0) -> None:
        self._name = name
        self._image_shape = tuple(int(s) for s in image_shape)
        if raw_labels is not None and use_labels:
            raw_labels = _check_labels(raw_labels, num_raw, name)
        else:
            raw_labels = np.zeros((num_raw, 0), dtype=np.float32)
        self._raw_labels = raw_labels
        if raw_labels.dtype == np.int64:
            self._label_shape = [int(raw_labels.max()) + 1 if raw_labels.size else 0]
        else:
            self._label_shape = list(raw_labels.shape[1:])
        # Seeded subset of max_size images (EDM: shuffle with RandomState(seed), keep first, sort).
        self._raw_idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None:
            if max_size <= 0:
                raise DataError(f"max_size must be positive, got {max_size}")
            if num_raw > max_size:
                np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
                self._raw_idx = np.sort(self._raw_idx[:max_size])
        # Mirrored copies appended after the originals.
        self._xflip = np.zeros(self._raw_idx.size, dtype=bool)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _load(self, raw_indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        idx = int(idx)
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for dataset of {len(self)} images")
        return self.images_uint8(idx, idx + 1)[0], self.get_label(idx)

    def images_uint8(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images `start:stop` as one uint8 array `[n, C, H, W]` (x-flipped copies included)."""
        raw = self._raw_idx[start:stop]
        images = np.array(self._load(raw), dtype=np.uint8, copy=True)
        flip = self._xflip[start:stop]
        if flip.any():
            images[flip] = images[flip][..., ::-1]
        return images

    items = images_uint8

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Labels `start:stop` as float32 `[n, label_dim]` (one-hot for class labels)."""
        raw = self._raw_labels[self._raw_idx[start:stop]]
        if raw.dtype == np.int64:
            onehot = np.zeros((raw.shape[0], self.label_dim), dtype=np.float32)
            onehot[np.arange(raw.shape[0]), raw] = 1
            return onehot
        return raw.astype(np.float32, copy=True)

    def get_label(self, idx: int) -> np.ndarray:
        return self.labels(idx, idx + 1)[0]

    def class_indices(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Integer class labels `start:stop` (int64 `[n]`); DataError if the labels are not classes."""
        if not self.has_onehot_labels:
            raise DataError(f"dataset {self._name!r} has no class labels: open it with use_labels=True")
        return self._raw_labels[self._raw_idx[start:stop]].copy()

    @staticmethod
    def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 tensor in [-1, 1] (`x / 127.5 - 1`)."""
        return to_float(images)

    @property
    def name(self) -> str:
        return self._name

    @property
    def image_shape(self) -> list[int]:
        return list(self._image_shape)

    @property
    def num_channels(self) -> int:
        return self._image_shape[0]

    @property
    def resolution(self) -> int:
        return self._image_shape[1]

    @property
    def label_shape(self) -> list[int]:
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        return self._label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(s != 0 for s in self._label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._raw_labels.dtype == np.int64 and self.has_labels

    def __repr__(self) -> str:
        c, h, w = self._image_shape
        return f"{type(self).__name__}({self._name!r}, n={len(self)}, shape={c}x{h}x{w}, labels={self.label_dim})"


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    """Class labels -> int64 [n] (>= 0); label vectors -> float32 [n, L]."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (n,):
        raise DataError(f"{what}: {labels.shape[0] if labels.ndim else 0} labels for {n} images: "
                        "give exactly one label per image")
    if labels.ndim == 1:
        if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
            raise DataError(f"{what}: class labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise DataError(f"{what}: class labels must be >= 0, got {int(labels.min())}")
        return labels
    if labels.ndim == 2 and labels.dtype.kind in "iubf":
        return labels.astype(np.float32)
    raise DataError(f"{what}: labels must be class indices [N] or vectors [N, L], got shape {labels.shape}")


# ----------------------------------------------------------------------------------------------------------
# In-memory arrays (IDX, npz, pickles, scikit-learn digits).


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 array `[N, C, H, W]`; the transform is applied once, at load."""

    def __init__(self, name: str, images: np.ndarray, raw_labels: np.ndarray | None = None, *,
                 resolution: int | None = None, transform: str = "none", max_size: int | None = None,
                 use_labels: bool = False, xflip: bool = False, random_seed: int = 0) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"{name}: images must be uint8 [N, C, H, W] with C = 1 or 3, got "
                            f"{images.dtype} {list(images.shape)}")
        if images.shape[0] == 0:
            raise DataError(f"{name}: the dataset holds no images")
        super().__init__(name, images.shape[0], (images.shape[1], 0, 0), raw_labels, max_size=max_size,
                         use_labels=use_labels, xflip=xflip, random_seed=random_seed)
        # Keep only the selected images, then transform them once.
        keep = np.unique(self._raw_idx)
        if keep.size < images.shape[0]:
            images = images[keep]
            self._raw_labels = self._raw_labels[keep]
            self._raw_idx = np.searchsorted(keep, self._raw_idx)
        self._images = np.ascontiguousarray(transform_images(images, resolution, transform, name))
        self._image_shape = tuple(self._images.shape[1:])

    def _load(self, raw_indices: np.ndarray) -> np.ndarray:
        if raw_indices.size and np.all(np.diff(raw_indices) == 1):
            return self._images[raw_indices[0]:raw_indices[-1] + 1]
        return self._images[raw_indices]


# ----------------------------------------------------------------------------------------------------------
# EDM zip archives and image folders, decoded lazily.


def image_extensions() -> set[str]:
    import PIL.Image

    PIL.Image.init()
    return {ext.lower() for ext in PIL.Image.EXTENSION}


class ImageFileDataset(ImageDataset):
    """An EDM dataset: a zip archive or a folder of same-size L/RGB images, with optional `dataset.json`
    `{"labels": [[relative/path.png, label], ...]}` (labels may be null). Images decode on access; every
    image must match the first one in size and mode."""

    def __init__(self, path: str | os.PathLike, *, resolution: int | None = None, transform: str = "none",
                 max_size: int | None = None, use_labels: bool = False, xflip: bool = False,
                 random_seed: int = 0) -> None:
        self._path = Path(path)
        self._zipfile: zipfile.ZipFile | None = None
        self._is_zip = not self._path.is_dir()
        self._what = self._path.name
        if self._is_zip:
            names = self._zip().namelist()
        else:
            names = [p.relative_to(self._path).as_posix() for p in self._path.rglob("*") if p.is_file()]
        exts = image_extensions()
        self._fnames = sorted(f for f in names if os.path.splitext(f)[1].lower() in exts and not is_hidden(f))
        if not self._fnames:
            raise DataError(f"{self._what}: no image files found: create the dataset with `diffspace dataset`")
        first = self._decode(self._fnames[0], None)
        self._native = first.shape  # (C, H, W) of every raw image
        self._resolution, self._transform = resolution, transform
        shape = transform_images(first[None], resolution, transform, f"{self._what}: {self._fnames[0]}").shape
        labels = self._read_labels(set(names)) if use_labels else None
        super().__init__(self._path.stem, len(self._fnames), shape[1:], labels, max_size=max_size,
                         use_labels=use_labels, xflip=xflip, random_seed=random_seed)

    def _zip(self) -> zipfile.ZipFile:
        if self._zipfile is None:
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except FileNotFoundError:
                raise DataError(f"{self._path}: no such file or folder") from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"{self._what} is not a valid zip file (truncated?): re-create it with "
                                f"`diffspace dataset` ({e})") from None
        return self._zipfile

    def _read_bytes(self, fname: str) -> bytes:
        try:
            if self._is_zip:
                return self._zip().read(fname)
            return (self._path / fname).read_bytes()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
            raise DataError(f"{self._what}: cannot read {fname} ({e}): the archive is damaged, re-create it "
                            "with `diffspace dataset`") from None

    def _decode(self, fname: str, expect: tuple[int, int, int] | None) -> np.ndarray:
        import PIL.Image

        try:
            with PIL.Image.open(io.BytesIO(self._read_bytes(fname))) as img:
                mode, size = img.mode, img.size
                if mode not in ("L", "RGB"):
                    raise DataError(f"{self._what}: {fname} has mode {mode}, expected L (gray) or RGB: convert "
                                    "the images with `diffspace dataset --channels 1|3`")
                arr = np.asarray(img)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{self._what}: {fname} is not a readable image ({image_error(e)}): re-create the "
                            "dataset with `diffspace dataset`, or remove the file") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if expect is not None and arr.shape != expect:
            c0, h0, w0 = expect
            raise DataError(f"{self._what}: {fname} is {size[0]}x{size[1]} {mode}, but the dataset is "
                            f"{w0}x{h0} {'L' if c0 == 1 else 'RGB'}: re-create it with `diffspace dataset`")
        return arr

    def _read_labels(self, names: set[str]) -> np.ndarray | None:
        if "dataset.json" not in names:
            return None
        try:
            meta = json.loads(self._read_bytes("dataset.json"))
            labels = meta["labels"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise DataError(f"{self._what}: dataset.json is not valid ({type(e).__name__}: {e}): it must be "
                            '{"labels": [["00000/img00000000.png", 0], ...]} or {"labels": null}') from None
        if labels is None:
            return None
        try:
            table = {str(k).replace("\\", "/"): v for k, v in labels}
        except (TypeError, ValueError):
            raise DataError(f"{self._what}: dataset.json labels must be a list of [file, label] pairs") from None
        missing = [f for f in self._fnames if f not in table]
        if missing:
            raise DataError(f"{self._what}: dataset.json has no label for {len(missing)} image(s), e.g. "
                            f"{missing[0]}: re-create the dataset with `diffspace dataset`")
        extra = sorted(set(table) - set(self._fnames))
        if extra:
            raise DataError(f"{self._what}: dataset.json labels {len(extra)} file(s) that are not images in "
                            f"the dataset, e.g. {extra[0]}: re-create the dataset with `diffspace dataset`")
        try:
            arr = np.array([table[f] for f in self._fnames])
        except ValueError:
            raise DataError(f"{self._what}: dataset.json labels have inconsistent shapes") from None
        return _check_labels(arr, len(self._fnames), f"{self._what}: dataset.json")

    def _load(self, raw_indices: np.ndarray) -> np.ndarray:
        out = np.empty((raw_indices.size, *self._image_shape), dtype=np.uint8)
        for i, r in enumerate(raw_indices):
            img = self._decode(self._fnames[int(r)], self._native)[None]
            out[i] = transform_images(img, self._resolution, self._transform, self._what)[0]
        return out

    def validate(self) -> None:
        """Decode every image once (DataError on the first bad one)."""
        for r in range(len(self._fnames)):
            self._decode(self._fnames[r], self._native)

    def close(self) -> None:
        if self._zipfile is not None:
            self._zipfile.close()
            self._zipfile = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None)  # each DataLoader worker reopens the archive

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
