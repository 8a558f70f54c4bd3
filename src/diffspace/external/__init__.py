"""Models from elsewhere as diffspace denoisers: NVlabs/edm snapshots, discrete-time VP ε/v-prediction networks,
diffusers UNet2DModel folders, and guidance (classifier-free and autoguidance) as a denoiser wrapper.

    from diffspace.external import load_diffusers, Guided
    D, info = load_diffusers("my-ddpm/")          # UNet2DModel + scheduler_config.json
    x = diffspace.samplers.get("dpmpp_2m")(D, latents * sigmas[0], sigmas)

Submodules are imported on first use (diffusers itself only when a diffusers folder is loaded).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiscreteVP": "vp", "sigmas_from_alphas_cumprod": "vp", "PREDICTIONS": "vp",
    "load_diffusers": "diffusers_folder", "is_diffusers_folder": "diffusers_folder",
    "Guided": "guidance", "combine": "guidance",
    "load_foreign": "load", "load_denoiser": "load", "guided": "load", "is_edm_pickle": "load",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"diffspace.external.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'diffspace.external' has no attribute {name!r}")
