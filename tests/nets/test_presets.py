"""Network presets and construction from saved configurations."""

from __future__ import annotations

import json

import pytest
import torch

from diffspace.errors import ConfigError
from diffspace.nets import NETWORKS, PRESETS, build_network, count_parameters, network_from_config


def shape_args(arch):
    return dict(img_resolution=None, img_channels=2) if arch == "mlp" else dict(img_resolution=32, img_channels=3)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        build_network("unet9000", img_resolution=32, img_channels=3)
    for name in PRESETS:
        assert name in str(err.value)


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match="'widht'"):
        build_network("ddpmpp-small", img_resolution=32, img_channels=3, widht=3)


def test_unet_needs_a_resolution():
    with pytest.raises(ConfigError, match="img_resolution"):
        build_network("ddpmpp", img_resolution=None, img_channels=3)


def test_unknown_class_name():
    with pytest.raises(ConfigError, match="Transformer"):
        network_from_config("Transformer", {})


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_every_preset_builds_and_round_trips_through_its_config(arch):
    with torch.device("meta"):
        net = build_network(arch, **shape_args(arch), label_dim=10, augment_dim=9)
        # init_kwargs is plain JSON: a checkpoint can store it and rebuild the same network.
        config = json.loads(json.dumps(net.init_kwargs))
        again = network_from_config(type(net).__name__, config)
    assert type(net).__name__ in NETWORKS
    assert [(k, v.shape) for k, v in net.state_dict().items()] == [(k, v.shape) for k, v in again.state_dict().items()]
    assert net.init_kwargs["label_dim"] == 10 and net.init_kwargs["augment_dim"] == 9
    assert net.init_kwargs["dropout"] == PRESETS[arch].dropout


def test_overrides_and_dropout():
    net = build_network("ddpmpp-small", img_resolution=16, img_channels=1, dropout=0.2, model_channels=64)
    assert net.init_kwargs["dropout"] == 0.2 and net.init_kwargs["model_channels"] == 64
    net = build_network("adm", img_resolution=64, img_channels=3, out_channels=6, model_channels=64,
                        channel_mult=[1, 2], num_blocks=1)
    assert net.init_kwargs["out_channels"] == 6 and net.init_kwargs["dropout"] == 0.10
    with pytest.raises(ConfigError, match="dropout"):
        build_network("mlp", img_resolution=None, img_channels=2, dropout=1.5)


def test_small_preset_size_and_forward():
    """ddpmpp-small: a 2-4M parameter DDPM++ for 32x32 images that a 2-core CPU can train."""
    net = build_network("ddpmpp-small", img_resolution=32, img_channels=3).eval()
    assert 2_000_000 <= count_parameters(net) <= 4_000_000
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x, torch.zeros(2)).shape == x.shape


def test_small_ncsnpp_forward():
    net = build_network("ncsnpp-small", img_resolution=16, img_channels=1, label_dim=10).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert net(x, torch.zeros(2), torch.eye(10)[:2]).shape == x.shape
