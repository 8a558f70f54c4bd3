"""Named network configurations (EDM's `--arch` choices and CPU-sized ones) and constructors by name or saved config.

`ddpmpp`, `ncsnpp` and `adm` are EDM's `--arch` choices with its CIFAR-10 (32×32) and ImageNet-64 sizes;
`*-small` are CPU-sized versions; `mlp` is for low-dimensional data.

How data shapes map to the arguments: a U-Net sees images [B, img_channels, img_resolution, img_resolution].
The MLP sees vectors: `img_resolution=None` means data of shape [B, img_channels] (e.g. 2-D toy points with
`img_channels=2`); an integer `img_resolution=r` means images [B, img_channels, r, r], flattened inside.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from diffspace.errors import ConfigError
from diffspace.nets.dhariwal import DhariwalUNet
from diffspace.nets.small import MLP
from diffspace.nets.songunet import SongUNet

__all__ = ["Preset", "PRESETS", "NETWORKS", "build_network", "network_from_config", "count_parameters"]

NETWORKS: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet, "MLP": MLP}


@dataclass(frozen=True)
class Preset:
    """A network class name, its constructor arguments and the default dropout."""

    model_type: str
    kwargs: Mapping = field(default_factory=dict)
    dropout: float = 0.0
    description: str = ""


_DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1])
_NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
               channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
_SMALL = dict(model_channels=32, channel_mult=[1, 2, 4], num_blocks=2, attn_resolutions=[16])

PRESETS: dict[str, Preset] = {
    "ddpmpp": Preset("SongUNet", dict(_DDPMPP, model_channels=128, channel_mult=[2, 2, 2]), 0.13,
                     "EDM DDPM++ (CIFAR-10 32x32 size)"),
    "ncsnpp": Preset("SongUNet", dict(_NCSNPP, model_channels=128, channel_mult=[2, 2, 2]), 0.13,
                     "EDM NCSN++ (CIFAR-10 32x32 size)"),
    "adm": Preset("DhariwalUNet", dict(model_channels=192, channel_mult=[1, 2, 3, 4]), 0.10,
                  "EDM ADM (ImageNet-64 size)"),
    "ddpmpp-small": Preset("SongUNet", dict(_DDPMPP, **_SMALL), 0.0, "DDPM++ for CPU training at 32x32"),
    "ncsnpp-small": Preset("SongUNet", dict(_NCSNPP, **_SMALL), 0.0, "NCSN++ for CPU training at 32x32"),
    "mlp": Preset("MLP", dict(hidden=256, num_layers=4), 0.0, "residual MLP for low-dimensional data"),
}


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameter elements (buffers excluded)."""
    return sum(p.numel() for p in net.parameters())


def _check_kwargs(cls: type[nn.Module], kwargs: Mapping) -> None:
    allowed = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ConfigError(f"{cls.__name__} has no argument {unknown[0]!r}: choose from {', '.join(allowed)}")


def network_from_config(model_type: str, init_kwargs: Mapping) -> nn.Module:
    """Rebuild a network from its class name and constructor arguments (`net.init_kwargs`, or EDM's
    saved `model_kwargs` plus in/out channels)."""
    if model_type not in NETWORKS:
        raise ConfigError(f"unknown network class {model_type!r}: choose one of {', '.join(NETWORKS)}")
    cls = NETWORKS[model_type]
    _check_kwargs(cls, init_kwargs)
    return cls(**init_kwargs)


def build_network(arch: str, *, img_resolution: int | None, img_channels: int, label_dim: int = 0,
                  augment_dim: int = 0, dropout: float | None = None, **overrides) -> nn.Module:
    """Network of preset `arch` for data of the given shape (see the module docstring); `overrides`
    replace any constructor argument of the preset (e.g. `model_channels=96`, `out_channels=6`)."""
    if arch not in PRESETS:
        raise ConfigError(f"unknown network {arch!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[arch]
    cls = NETWORKS[preset.model_type]
    dropout = preset.dropout if dropout is None else dropout
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout={dropout} must be in [0, 1)")
    if int(img_channels) < 1:
        raise ConfigError(f"img_channels={img_channels} must be a positive integer")
    if cls is MLP:
        if img_resolution is not None and int(img_resolution) < 1:
            raise ConfigError(f"img_resolution={img_resolution} must be None (vectors) or a positive integer")
        features = img_channels * (1 if img_resolution is None else int(img_resolution) ** 2)
        kwargs = dict(in_features=features, label_dim=label_dim, augment_dim=augment_dim, dropout=dropout)
    else:
        if img_resolution is None:
            raise ConfigError(f"network {arch!r} needs an image resolution: pass img_resolution (e.g. 32)")
        kwargs = dict(img_resolution=int(img_resolution), in_channels=img_channels, out_channels=img_channels,
                      label_dim=label_dim, augment_dim=augment_dim, dropout=dropout)
    kwargs.update(preset.kwargs)
    kwargs.update(overrides)
    return network_from_config(preset.model_type, kwargs)
