"""State-dict structure of EDM's published configurations (spec §1.7).

tests/fixtures/edm_state_dicts.json lists, for NVlabs/edm's EDMPrecond built with the constructor arguments
its train.py saves, the ordered (key, shape) pairs of the state dict and the parameter count, read off
EDM's own classes. Our networks, built from the same saved arguments, must reproduce them exactly
(EDMPrecond keeps the raw network as `.model`, hence the `model.` prefix).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffspace.nets import build_network, count_parameters, network_from_config

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "edm_state_dicts.json").read_text())
CONFIGS = FIXTURE["configs"]


def from_edm_kwargs(init_kwargs: dict) -> torch.nn.Module:
    """Build our raw network the way EDM's preconditioners build theirs from the saved kwargs."""
    kwargs = dict(init_kwargs)
    model_type = kwargs.pop("model_type")
    kwargs.pop("use_fp16")
    channels = kwargs.pop("img_channels")
    return network_from_config(model_type, dict(kwargs, in_channels=channels, out_channels=channels))


def structure(net: torch.nn.Module) -> list[list]:
    return [["model." + k, list(v.shape)] for k, v in net.state_dict().items()]


def test_fixture_covers_the_three_architectures():
    kinds = {c["init_kwargs"]["model_type"] for c in CONFIGS.values()}
    assert kinds == {"SongUNet", "DhariwalUNet"}
    assert {name.rsplit("-", 1)[1] for name in CONFIGS} == {"ddpmpp", "ncsnpp", "adm"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_keys_shapes_and_count_match_edm(name):
    entry = CONFIGS[name]
    with torch.device("meta"):  # shapes only, no memory or init time
        net = from_edm_kwargs(entry["init_kwargs"])
    assert structure(net) == entry["state_dict"]
    assert count_parameters(net) == entry["num_parameters"]


@pytest.mark.parametrize(("name", "arch", "resolution", "label_dim", "augment_dim"), [
    ("cifar10-32x32-uncond-ddpmpp", "ddpmpp", 32, 0, 9),
    ("cifar10-32x32-cond-ddpmpp", "ddpmpp", 32, 10, 9),
    ("cifar10-32x32-uncond-ncsnpp", "ncsnpp", 32, 0, 9),
    ("cifar10-32x32-cond-ncsnpp", "ncsnpp", 32, 10, 9),
    ("imagenet-64x64-cond-adm", "adm", 64, 1000, 0),
])
def test_presets_reproduce_edm_configurations(name, arch, resolution, label_dim, augment_dim):
    entry = CONFIGS[name]
    with torch.device("meta"):
        net = build_network(arch, img_resolution=resolution, img_channels=3, label_dim=label_dim,
                            augment_dim=augment_dim)
    assert structure(net) == entry["state_dict"]
    assert net.init_kwargs["dropout"] == entry["init_kwargs"]["dropout"]


def test_edm_state_dict_loads_strict_into_preset():
    """A state dict with EDM's keys and shapes (from the fixture) loads with strict=True."""
    entry = CONFIGS["cifar10-32x32-cond-ncsnpp"]
    net = build_network("ncsnpp", img_resolution=32, img_channels=3, label_dim=10, augment_dim=9)
    g = torch.Generator().manual_seed(0)
    state = {k[len("model."):]: torch.randn(shape, generator=g) for k, shape in entry["state_dict"]}
    net.load_state_dict(state, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
