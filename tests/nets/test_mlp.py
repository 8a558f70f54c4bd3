"""Forward contract of the MLP for low-dimensional data."""

from __future__ import annotations

import pytest
import torch

from diffspace.errors import ConfigError
from diffspace.nets import MLP, build_network

from .helpers import assert_compiles_whole, one_hot, randomize_


def test_two_dimensional_points():
    net = build_network("mlp", img_resolution=None, img_channels=2).eval()
    assert net.in_features == 2 and net.out_features == 2
    x, noise = torch.randn(5, 2), torch.randn(5)
    with torch.no_grad():
        y = net(x, noise)
    assert y.shape == (5, 2) and y.dtype == torch.float32


def test_images_are_flattened_and_restored():
    net = build_network("mlp", img_resolution=4, img_channels=1, hidden=32, num_layers=2).eval()
    assert net.in_features == 16
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        assert net(x, torch.zeros(3)).shape == x.shape


def test_out_features_differs():
    net = MLP(in_features=3, out_features=6, hidden=16, num_layers=1).eval()
    with torch.no_grad():
        assert net(torch.randn(4, 3), torch.zeros(4)).shape == (4, 6)


def test_wrong_feature_count_raises_config_error():
    net = MLP(in_features=2, hidden=16, num_layers=1)
    with pytest.raises(ConfigError, match="in_features=3"):
        net(torch.randn(4, 3), torch.zeros(4))


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_conditioning_paths(embedding_type):
    net = randomize_(MLP(in_features=2, hidden=32, num_layers=2, label_dim=3, augment_dim=9,
                         embedding_type=embedding_type)).eval()
    assert net.map_augment.bias is None
    x, noise, aug = torch.randn(4, 2), torch.randn(4), torch.randn(4, 9)
    labels = one_hot([0, 1, 2, 0], 3)
    with torch.no_grad():
        base = net(x, noise, labels)
        # Non-leaking augmentation: None is exactly the zero vector, non-zero labels act.
        assert torch.equal(base, net(x, noise, labels, None))
        assert torch.equal(base, net(x, noise, labels, torch.zeros_like(aug)))
        assert (net(x, noise, labels, aug) - base).abs().max() > 1e-3 * base.abs().max()
        # Class labels and noise labels act.
        assert (net(x, noise, one_hot([1, 2, 0, 1], 3)) - base).abs().max() > 1e-3 * base.abs().max()
        assert (net(x, noise + 1, labels) - base).abs().max() > 1e-3 * base.abs().max()
        assert torch.equal(net(x, noise, None), net(x, noise, torch.zeros_like(labels)))


def test_output_is_near_zero_at_initialisation():
    """Like EDM's U-Nets, the last layer starts at 1e-5 scale, so F ≈ 0 and D ≈ c_skip·x at first."""
    net = MLP(in_features=2).eval()
    with torch.no_grad():
        y = net(torch.randn(64, 2), torch.randn(64))
    # 1e-5 * xavier weights (|w| < sqrt(6/(256+2)) ≈ 0.15) on 256 SiLU(LayerNorm) features of size O(1).
    assert y.abs().max() < 1e-3


def test_dropout_and_gradients():
    net = randomize_(MLP(in_features=2, hidden=32, num_layers=2, dropout=0.5, label_dim=2, augment_dim=9))
    x, noise, labels, aug = torch.randn(8, 2), torch.randn(8), one_hot([0, 1] * 4, 2), torch.randn(8, 9)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, noise, labels, aug), net(x, noise, labels, aug))
    net.train()
    net(x, noise, labels, aug).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(in_features=0), "in_features"),
    (dict(in_features=2, noise_channels=63), "noise_channels"),
    (dict(in_features=2, embedding_type="learned"), "embedding_type"),
    (dict(in_features=2, augment_dim=-1), "augment_dim"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MLP(**kwargs)


def test_compile_traces_without_graph_breaks():
    net = randomize_(MLP(in_features=2, hidden=16, num_layers=2, label_dim=3, augment_dim=9)).eval()
    x, noise, labels, aug = torch.randn(4, 2), torch.randn(4), one_hot([0, 1, 2, 0], 3), torch.randn(4, 9)
    assert_compiles_whole(net, x, noise, labels, aug)
