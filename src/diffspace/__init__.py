"""diffspace: diffusion models in the EDM design space (Karras et al. 2022).

Submodules are imported lazily, so `import diffspace` stays light:

    import diffspace
    sigmas = diffspace.grids.edm(18)
    D = diffspace.denoisers.GaussianMixture(weights, means, covs)
    x = diffspace.samplers.heun(D, latents * sigmas[0], sigmas)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "data", "denoisers", "design", "errors", "generate", "geometry", "grids", "io", "metrics", "nets", "samplers",
    "train",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"diffspace.{name}")
    raise AttributeError(f"module 'diffspace' has no attribute {name!r}")
