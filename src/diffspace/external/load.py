"""One entry point for every network file diffspace commands accept (`--network`):

- an NVlabs/edm snapshot (`*.pkl`): read by the restricted unpickler of diffspace.io.edm_pickle (no code from the
  file runs) and rebuilt from diffspace's equivalent classes;
- a diffusers folder (`save_pretrained` output: UNet2DModel + scheduler config): wrapped as a discrete VP denoiser;
- anything else: a diffspace checkpoint or run folder (diffspace.io.checkpoint).

`diffspace.generate.load` calls `load_foreign` first, so every command that loads through it accepts all three.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffspace.errors import CheckpointError, ConfigError

__all__ = ["is_edm_pickle", "load_foreign", "load_denoiser", "guided"]


def is_edm_pickle(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".pkl"


def load_foreign(path: str | os.PathLike, *, which: str = "ema", device: str | torch.device = "cpu"):
    """(network, info) for an EDM snapshot or a diffusers folder; None for anything else."""
    from diffspace.external.diffusers_folder import is_diffusers_folder, load_diffusers

    path = Path(path)
    if is_edm_pickle(path):
        from diffspace.io.edm_pickle import load_edm_snapshot

        if which != "ema":
            raise ConfigError(f"--which {which}: an EDM snapshot holds only the EMA network; drop --which")
        if not path.is_file():
            raise CheckpointError(f"EDM snapshot {path} does not exist")
        try:
            net, info = load_edm_snapshot(path)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        return net.requires_grad_(False).to(device), info
    if is_diffusers_folder(path):
        if which != "ema":
            raise ConfigError(f"--which {which}: a diffusers folder holds one network; drop --which")
        return load_diffusers(path, device=device)
    return None


def load_denoiser(path: str | os.PathLike, *, which: str = "ema", device: str | torch.device = "cpu"):
    """(network, info) of an EDM snapshot, a diffusers folder, a diffspace checkpoint or a run folder."""
    from diffspace.generate import load

    return load(path, which=which, device=device)


def guided(net, weight: float | None, guidance_net: str | os.PathLike | None = None, *,
           device: str | torch.device = "cpu"):
    """`net` wrapped for guidance with weight `weight` (None: `net` unchanged): autoguidance by the network at
    `guidance_net` when given, classifier-free guidance otherwise."""
    from diffspace.external.guidance import Guided

    if weight is None:
        if guidance_net is not None:
            raise ConfigError("--guidance-net needs a guidance weight: add e.g. --guidance 2")
        return net
    ref = None
    if guidance_net is not None:
        ref, _ = load_denoiser(guidance_net, device=device)
    return Guided(net, weight, ref)
