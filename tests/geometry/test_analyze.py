"""`diffspace analyze`: the report on digits (optimal denoiser) and with a network, and one-line errors that leave
no report folder behind."""

import json

import numpy as np
import pytest
import torch

from diffspace.cli import main
from diffspace.io.checkpoint import save_network
from diffspace.metrics.smallfeat import FeatureNet, save_feature_net
from tests.test_generate import _unet


@pytest.fixture(scope="module")
def ckpt8(tmp_path_factory):
    """A random-weight U-Net on 1x8x8 images (the shape of digits)."""
    path = tmp_path_factory.mktemp("net") / "network-snapshot-000000.safetensors"
    save_network(path, _unet(res=8, channels=1))
    return path


def test_analyze_digits_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", "--data", "digits", "--quick", "--outdir", str(out), "--no-progress"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "deviation.png", "distance_to_final.png", "norms.png", "cosine.png",
            "projections.png", "kde.png", "jump.png", "interpolation_norms.png", "interpolation.png", "nearest.png",
            "trajectories.png"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    r = json.loads((out / "results.json").read_text())
    opt = r["runs"]["optimal"]
    assert r["meanshift"]["euler_max_abs_diff"] < 1e-12
    assert opt["likelihood"]["min_delta"] >= 0 and r["memorization"]["optimal"]["memorized"] == 1.0
    assert min(opt["denoised_closer"][1:]) == 1.0
    assert opt["jump_nfe"] == list(range(1, 19))
    md = (out / "report.md").read_text()
    assert "## ODE-Jump" in md and "diffspace analyze --data digits --quick" in md
    for png in out.glob("*.png"):
        assert png.stat().st_size < 200_000, png


def test_analyze_with_a_network_and_features(tmp_path, ckpt8):
    feats = tmp_path / "features.safetensors"
    torch.manual_seed(0)
    save_feature_net(FeatureNet(1, 8, 10, width=4, feature_dim=8), feats, dataset="digits")
    out = tmp_path / "report"
    assert main(["analyze", "--data", "digits", "--network", str(ckpt8), "--features", str(feats), "--seeds", "0-5",
                 "--fid-seeds", "0-19", "--steps", "6", "--interp-pairs", "1", "--interp-points", "3",
                 "--outdir", str(out), "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["runs"]) == {"optimal", "learned"}
    assert len(r["score_deviation"]["on_learned"]["mean"]) == 6
    assert [row["k"] for row in r["jump_fid"]["rows"]] == list(range(1, 7))
    assert r["jump_fid"]["rows"][-1]["nfe"] == 6
    assert 0 <= r["memorization"]["learned"]["memorized"] <= 1
    assert (out / "score_deviation.png").exists()


def test_errors_leave_no_report(tmp_path, ckpt8, capsys):
    images = np.random.RandomState(0).randint(0, 256, (20, 1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "data16.npz", images=images)
    out = tmp_path / "out"
    cases = [
        (["--data", str(tmp_path / "data16.npz"), "--network", str(ckpt8)], "--resolution 8"),
        (["--data", "digits", "--steps", "1"], "--steps 1"),
        (["--data", "digits", "--sampler", "nope"], "unknown sampler"),
        (["--data", "digits", "--features", "x.safetensors"], "--network"),
        (["--data", str(tmp_path / "missing.npz")], "missing.npz"),
        (["--data", "digits", "--opt", "S_churn=3"], "S_churn"),
    ]
    for argv, needle in cases:
        code = main(["analyze", *argv, "--outdir", str(out), "--no-progress", "--quick"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and needle in err and len(err.splitlines()) == 1, (argv, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data16.npz"], argv


def test_nan_network_and_existing_report(tmp_path, capsys):
    net = _unet(res=8, channels=1, seed=3)
    with torch.no_grad():
        net.model.enc["8x8_conv"].weight.fill_(float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_network(bad, net)
    out = tmp_path / "out"
    code = main(["analyze", "--data", "digits", "--network", str(bad), "--seeds", "0-1", "--steps", "3",
                 "--outdir", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "NaN" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors"]
    out.mkdir()
    (out / "report.md").write_text("keep me")
    assert main(["analyze", "--data", "digits", "--outdir", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "keep me"
