"""Conversion of image folders, IDX, npz, pickles and built-in sets into EDM dataset zips (the logic of
`diffspace dataset`, after NVlabs/edm's dataset_tool.py)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffspace.data import formats
from diffspace.data.dataset import ImageDataset, image_extensions, mode_channels, transform_images
from diffspace.errors import DataError

CHUNK = 1024  # images converted per batch for array sources


@dataclass
class Summary:
    """What `convert` wrote."""

    dest: Path
    count: int
    shape: tuple[int, int, int]  # C, H, W
    labels: str  # "none", "N classes" or "vectors of L"


def parse_resolution(text: str) -> int:
    """`32` or `32x32` -> 32 (EDM datasets are square)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"resolution {text!r} is not N or WxH (e.g. 32 or 32x32)") from None
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise DataError(f"resolution {text!r} is not N or WxH with positive sizes (e.g. 32x32)")
    if len(sizes) == 2 and sizes[0] != sizes[1]:
        raise DataError(f"resolution {text}: EDM datasets are square, use e.g. {sizes[0]}x{sizes[0]} with "
                        "--transform center-crop")
    return sizes[0]


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 `[n, C, H, W]` to `channels` (gray -> RGB copies the plane; RGB -> gray uses ITU-R 601 luma
    L = (299 R + 587 G + 114 B) / 1000, as PIL's convert("L"))."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    luma = (images.astype(np.uint32) * np.array([299, 587, 114], dtype=np.uint32)[:, None, None]).sum(1)
    return ((luma + 500) // 1000).astype(np.uint8)[:, None]


def check_dest(dest: str | os.PathLike, *, force: bool = False) -> Path:
    """Validate the destination zip before any work: a writable `.zip` path that does not exist (unless force)."""
    from diffspace.io.files import check_output_file

    if Path(dest).suffix.lower() != ".zip" and not Path(dest).is_dir():
        raise DataError(f"--dest {dest}: the destination must end in .zip")
    return check_output_file(dest, force=force, option="--dest")


def _is_plain_image_folder(path: Path) -> bool:
    return (path.is_dir() and formats.find_idx_files(path, "train") is None
            and not (path / "data_batch_1").is_file() and not (path / "cifar-10-batches-py").is_dir()
            and not (path / "mnist.pkl.gz").is_file())


def convert(source: str | os.PathLike, dest: str | os.PathLike, *, resolution: int | None = None,
            transform: str | None = None, max_images: int | None = None, channels: int | None = None,
            data_dir: str | os.PathLike | None = None) -> Summary:
    """Convert `source` (image folder, or anything `open_dataset` reads that holds images) into the EDM zip
    `dest`: first `max_images` images, brought to `resolution`² by `transform` (center-crop, pad, resize),
    converted to `channels` (1 or 3) if given. Class labels are kept. Nothing is left at `dest` on failure."""
    from diffspace.data import open_dataset

    transform = transform or "none"
    if max_images is not None and max_images <= 0:
        raise DataError(f"--max-images must be positive, got {max_images}")
    if channels not in (None, 1, 3):
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    src = Path(source).expanduser()
    if _is_plain_image_folder(src):
        images, labels = _folder_images(src, resolution, transform, max_images, channels)
        it: Iterator[np.ndarray] = images
    else:
        if str(source).startswith("toy:"):
            raise DataError(f"{source} is a 2-D point set, not images: nothing to convert")
        ds = open_dataset(source, use_labels=True, data_dir=data_dir)
        assert isinstance(ds, ImageDataset)
        n = len(ds) if max_images is None else min(len(ds), max_images)
        labels = None if not ds.has_labels else (ds.class_indices(0, n) if ds.has_onehot_labels
                                                  else ds.labels(0, n))
        it = _dataset_images(ds, n, resolution, transform, channels)
    first: list[tuple[int, int, int]] = []

    def record(images: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for img in images:
            if not first:
                first.append(img.shape)
            yield img

    count = formats.write_edm_zip(dest, record(it), labels)
    if labels is None:
        kind = "none"
    elif np.asarray(labels).ndim == 1:
        kind = f"{int(np.max(labels)) + 1} classes"
    else:
        kind = f"vectors of {np.asarray(labels).shape[1]}"
    return Summary(Path(dest), count, first[0], kind)


def _dataset_images(ds: ImageDataset, n: int, resolution: int | None, transform: str,
                    channels: int | None) -> Iterator[np.ndarray]:
    for start in range(0, n, CHUNK):
        batch = ds.images_uint8(start, min(start + CHUNK, n))
        batch = transform_images(batch, resolution, transform, ds.name)
        yield from convert_channels(batch, channels)


def _folder_images(root: Path, resolution: int | None, transform: str, max_images: int | None,
                   channels: int | None) -> tuple[Iterator[np.ndarray], np.ndarray | None]:
    """Images of a folder (recursive, sorted by relative path) and labels from its `dataset.json`."""
    exts = image_extensions()
    fnames = sorted(f for f in (p.relative_to(root).as_posix() for p in root.rglob("*")
                                if p.is_file() and p.suffix.lower() in exts) if not formats.is_hidden(f))
    if not fnames:
        raise DataError(f"{root}: no image files found (looked for {', '.join(sorted(exts)[:6])}, ...)")
    fnames = fnames[:max_images]
    labels = None
    if (root / "dataset.json").is_file():
        try:
            table = json.loads((root / "dataset.json").read_text())["labels"]
            table = None if table is None else {str(k).replace("\\", "/"): v for k, v in table}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{root.name}/dataset.json is not valid ({e}): expected "
                            '{"labels": [["relative/path.png", 0], ...]}') from None
        if table is not None:
            missing = [f for f in fnames if f not in table]
            if missing:
                raise DataError(f"{root.name}/dataset.json has no label for {len(missing)} image(s), e.g. "
                                f"{missing[0]}: label every image or remove dataset.json")
            labels = np.array([table[f] for f in fnames])
    return _decode_folder(root, fnames, resolution, transform, channels), labels


def _decode_folder(root: Path, fnames: list[str], resolution: int | None, transform: str,
                   channels: int | None) -> Iterator[np.ndarray]:
    import PIL.Image

    want, shape = channels, None
    for fname in fnames:
        try:
            with PIL.Image.open(io.BytesIO((root / fname).read_bytes())) as img:
                c = mode_channels(img.mode)
                if c is None:
                    raise DataError(f"{fname}: image mode {img.mode} (16-bit or float) is not supported: "
                                    "save it as 8-bit L or RGB")
                if want is None:
                    want = c
                elif c != want and channels is None:
                    raise DataError(f"{fname} is {img.mode} but the first image is "
                                    f"{'L' if want == 1 else 'RGB'} (mixed modes): pass --channels 1 or 3 to "
                                    "convert all images")
                arr = np.asarray(img.convert("L" if want == 1 else "RGB"))
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{fname} is not a readable image ({formats.image_error(e)}): fix or remove it") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if shape is not None and transform == "none" and arr.shape != shape:
            raise DataError(f"{fname} is {arr.shape[2]}x{arr.shape[1]} but the first image is "
                            f"{shape[2]}x{shape[1]}: pass --resolution N --transform center-crop|resize|pad")
        shape = shape or arr.shape
        yield transform_images(arr[None], resolution, transform, fname)[0]
