"""Evaluation metrics: FID, KID, precision/recall/density/coverage on Inception or small-data features, and
exact metrics for known distributions. Submodules load on first use (the Inception network only when asked).

    from diffspace import metrics
    ext = metrics.load_features("inception")           # or a file from `diffspace features train`
    f = metrics.extract_features(ext, metrics.open_images("samples/"))
    ref = metrics.load_reference("ref.npz")
    print(metrics.format_metrics(metrics.evaluate(f, ref)))
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "feature_stats": "fid", "frechet_distance": "fid", "fid_from_features": "fid", "sqrtm_psd": "fid",
    "trace_sqrt_product": "fid",
    "kid": "kid", "mmd2_unbiased": "kid", "polynomial_kernel": "kid",
    "prdc": "prdc", "knn_radii": "prdc",
    "load_inception": "features", "load_features": "features", "extract_features": "features",
    "find_detector": "features", "select_device": "features", "tf_bilinear_resize": "features",
    "InceptionFeatures": "features",
    "FeatureNet": "smallfeat", "train_feature_net": "smallfeat", "save_feature_net": "smallfeat",
    "load_feature_net": "smallfeat",
    "open_images": "images", "ImageSource": "images", "ArraySource": "images", "select": "images",
    "Reference": "reference", "save_reference": "reference", "load_reference": "reference",
    "evaluate": "reference", "format_metrics": "reference",
}
_SUBMODULES = ("exact", "features", "fid", "images", "kid", "likelihood", "prdc", "reference", "smallfeat")
_OTHERS = ("exact", "likelihood")  # modules whose `__all__` names are also reachable from here

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"diffspace.metrics.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"diffspace.metrics.{name}")
    if not name.startswith("_"):
        for mod in _OTHERS:
            try:
                m = importlib.import_module(f"diffspace.metrics.{mod}")
            except ImportError:
                continue
            if name in getattr(m, "__all__", ()):
                return getattr(m, name)
    raise AttributeError(f"module 'diffspace.metrics' has no attribute {name!r}")


def __dir__():
    return sorted([*_EXPORTS, *_SUBMODULES])
