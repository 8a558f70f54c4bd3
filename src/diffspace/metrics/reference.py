"""Reference statistics files and the full metric set (FID, KID, precision/recall/density/coverage) computed
from one set of features.

A reference .npz holds `mu` [d] and `sigma` [d, d] (float64, as EDM's `fid.py ref` writes them), the raw
`features` [n, d] (float32: n·d·4 bytes, e.g. 50,000 Inception features = 410 MB, 10,000 = 82 MB) needed by
KID and PRDC, and the feature network's identity (`extractor`, `extractor_sha256`, `feature_dim`). EDM's own
reference files (mu and sigma only) are read as Inception statistics; they give FID but no KID/PRDC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffspace.errors import DataError
from diffspace.metrics.features import INCEPTION_DIM, INCEPTION_NAME, INCEPTION_SHA256, save_npz_atomic
from diffspace.metrics.fid import feature_stats, frechet_distance
from diffspace.metrics.kid import kid
from diffspace.metrics.prdc import prdc

PRDC_MAX = 10_000  # PRDC uses at most this many features per set (Naeem et al. use 10k), a seeded subset


@dataclass
class Reference:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    extractor: str
    extractor_sha256: str
    path: str = ""

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def save_reference(path: str | os.PathLike, features: np.ndarray, extractor, **info) -> Reference:
    """Write mu, sigma, the features and the extractor identity (plus `info`) to `path`, atomically."""
    feats = np.asarray(features, dtype=np.float32)
    mu, sigma = feature_stats(feats)
    extra = {k: np.asarray(v) for k, v in info.items()}
    save_npz_atomic(path, mu=mu, sigma=sigma, features=feats, extractor=extractor.name,
                    extractor_sha256=extractor.identity, feature_dim=np.int64(extractor.dim), **extra)
    return Reference(mu, sigma, feats, extractor.name, extractor.identity, str(path))


def load_reference(path: str | os.PathLike) -> Reference:
    """Read a reference file written by `save_reference` or by EDM's `fid.py ref` (never unpickles)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"reference file {p} does not exist; make it with `diffspace fid ref --data … --dest {p}`")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # truncated or damaged archives raise zipfile, zlib, OSError or ValueError errors
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"reference file {p} is damaged or not an .npz file ({detail}): make it again with "
                        f"`diffspace fid ref --dest {p} --force`") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise DataError(f"{p} is not a reference file: it lacks 'mu' and 'sigma' (keys: {', '.join(arrays)})")
    if arrays["mu"].dtype.kind not in "fiu" or arrays["sigma"].dtype.kind not in "fiu":
        raise DataError(f"{p}: mu ({arrays['mu'].dtype}) and sigma ({arrays['sigma'].dtype}) must be numbers: "
                        "make the file again with `diffspace fid ref`")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d):
        raise DataError(f"{p}: mu {mu.shape} and sigma {sigma.shape} are not a [d] mean and [d, d] covariance")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{p}: mu or sigma holds NaN/Inf (a damaged file): make it again with `diffspace fid ref`")
    feats = arrays.get("features")
    if feats is not None and feats.dtype.kind != "f":
        raise DataError(f"{p}: features of dtype {feats.dtype} are not floating point (a damaged file): make it "
                        "again with `diffspace fid ref`")
    if feats is not None and feats.ndim == 2 and not np.isfinite(feats).all():
        raise DataError(f"{p}: features hold NaN/Inf (a damaged file): make it again with `diffspace fid ref`")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != d):
        raise DataError(f"{p}: features {feats.shape} do not match the statistics' dimension {d}")
    if "extractor_sha256" in arrays:
        name, sha = str(arrays.get("extractor", "?")), str(arrays["extractor_sha256"])
    elif d == INCEPTION_DIM:  # an EDM reference: Inception statistics without features
        name, sha = INCEPTION_NAME, INCEPTION_SHA256
    else:
        raise DataError(f"{p} does not say which feature network made it (dimension {d}); recompute it with "
                        "`diffspace fid ref`")
    return Reference(mu, sigma, feats, name, sha, str(p))


def check_compatible(ref: Reference, extractor) -> None:
    """Refuse a reference made with another feature network or of another dimension."""
    if ref.dim != extractor.dim or ref.extractor_sha256 != extractor.identity:
        raise DataError(
            f"reference {ref.path} was made with features {ref.extractor} (dimension {ref.dim}), not "
            f"{extractor.name} (dimension {extractor.dim}); pass the same --features or recompute the reference"
        )


def _subset(x: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    return x if x.shape[0] <= n else x[np.sort(rng.choice(x.shape[0], n, replace=False))]


def evaluate(
    features: np.ndarray,
    ref: Reference,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 5,
    prdc_max: int = PRDC_MAX,
    seed: int = 0,
    device=None,
) -> dict[str, float]:
    """FID against the reference statistics; KID and PRDC against the reference features when it has them."""
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] != ref.dim:
        raise DataError(f"features of dimension {feats.shape[-1]} do not match the reference dimension {ref.dim}")
    mu, sigma = feature_stats(feats)
    out = {"FID": frechet_distance(mu, sigma, ref.mu, ref.sigma)}
    if ref.features is not None:
        out["KID"], out["KID_std"] = kid(ref.features, feats, kid_subsets, kid_subset_size, seed=seed)
        rng = np.random.RandomState(seed)
        real, fake = _subset(ref.features, prdc_max, rng), _subset(feats, prdc_max, rng)
        out.update(prdc(real, fake, k=k, device=device))
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """One metric per line: `FID 12.3456`, `KID 0.001234`, …"""
    digits = {"FID": 4, "KID": 6, "KID_std": 6}
    return "\n".join(f"{name} {value:.{digits.get(name, 4)}f}" for name, value in metrics.items())
