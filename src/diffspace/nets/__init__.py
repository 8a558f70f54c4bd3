"""Denoiser backbones F(x, c_noise, class_labels, augment_labels), as in EDM.

`SongUNet` (DDPM++/NCSN++) and `DhariwalUNet` (ADM) match NVlabs/edm's classes argument for argument and
parameter for parameter; `MLP` serves low-dimensional data; `build_network(name, ...)` builds a preset.
"""

from diffspace.nets.dhariwal import DhariwalUNet
from diffspace.nets.presets import NETWORKS, PRESETS, Preset, build_network, count_parameters, network_from_config
from diffspace.nets.small import MLP
from diffspace.nets.songunet import SongUNet

__all__ = [
    "SongUNet", "DhariwalUNet", "MLP", "NETWORKS", "PRESETS", "Preset", "build_network", "network_from_config",
    "count_parameters",
]
