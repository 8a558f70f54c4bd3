"""Loading the peer libraries the benchmarks compare with, without making them dependencies.

k-diffusion: `pip install --no-deps k-diffusion torchsde torchdiffeq trampoline` (plus scipy, tqdm). Its package
__init__ imports training code (and torchvision); only `k_diffusion.sampling` is loaded here, with a stand-in
`torchvision` module when torchvision is not installed (sampling does not use it).
"""

from __future__ import annotations

import importlib.util
import sys
import types

K_INSTALL = ("pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2 "
             "(or bash scripts/setup.sh --test)")


def load_k_sampling():
    """k_diffusion.sampling imported without running k_diffusion/__init__.py; None when it is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    if importlib.util.find_spec("torchvision") is None:  # stand-in: k_diffusion.utils imports it at top level
        tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                     "torchvision.transforms.functional"))
        tv.transforms, tr.functional = tr, fn
        sys.modules.update({m.__name__: m for m in (tv, tr, fn)})
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    import k_diffusion.sampling as ks

    return ks


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(dist)
    except PackageNotFoundError:
        return "unknown"
