"""Small-data feature network: learns 8×8 digits, round-trips through safetensors, refuses wrong input."""

import json

import numpy as np
import pytest
import torch

from diffspace.errors import CheckpointError, DataError
from diffspace.metrics.smallfeat import (
    FeatureNet,
    accuracy,
    load_feature_net,
    read_feature_net,
    save_feature_net,
    train_feature_net,
)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()  # 1797 8×8 images with values 0..16, bundled with scikit-learn
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm], d.target[perm]


def test_trains_on_digits_to_high_accuracy(tmp_path):
    x, y = _digits()
    net = train_feature_net(x[:1400], y[:1400], 10, epochs=10, batch=64, lr=3e-3, seed=0)
    # A small CNN reaches ~98–99 % on held-out 8×8 digits; 90 % leaves room for seed/platform variation.
    acc = accuracy(net, x[1400:], y[1400:])
    assert acc > 0.90
    path = tmp_path / "digits.safetensors"
    save_feature_net(net, path, dataset="digits", test_accuracy=acc)
    ext = load_feature_net(path)
    assert ext.dim == 128 and ext.name == "smallfeat:digits" and len(ext.identity) == 64
    f = ext(x[:10]).numpy()
    assert f.shape == (10, 128) and (f >= 0).all()  # penultimate layer after ReLU
    np.testing.assert_array_equal(f, net.features(torch.as_tensor(x[:10])).detach().numpy())
    _, info = read_feature_net(path)
    assert info["test_accuracy"] == acc
    assert not list(tmp_path.glob("*.tmp"))


def test_training_is_seeded():
    x, y = _digits()
    a = train_feature_net(x[:256], y[:256], 10, epochs=1, batch=64, seed=3, width=8, feature_dim=16)
    b = train_feature_net(x[:256], y[:256], 10, epochs=1, batch=64, seed=3, width=8, feature_dim=16)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=ka)


def test_refuses_wrong_input(tmp_path):
    path = tmp_path / "net.safetensors"
    save_feature_net(FeatureNet(1, 28, 10, width=4, feature_dim=8), path)
    ext = load_feature_net(path)
    with pytest.raises(DataError, match=r"\[N, 1, 28, 28\]"):
        ext(np.zeros((2, 3, 32, 32), np.uint8))
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"config": json.dumps({"x": 1})})
    with pytest.raises(CheckpointError, match="not a diffspace feature network"):
        load_feature_net(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_feature_net(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_feature_net(tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="one class label per image"):
        train_feature_net(np.zeros((4, 1, 8, 8), np.uint8), np.zeros(3, int))
