"""`diffspace generate` faults found by the matrix: a corrupt newest snapshot, `--which net` on EMA-only files,
repeated seeds, a disk that fills up mid-run, a failure after the folders were made."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from diffspace.io.checkpoint import save_network

from .faults import check_refusal, disk_full_after, run_main, tiny_unet, tree


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a good older snapshot and a newer one whose tensors were damaged (one byte flipped)."""
    folder = tmp_path_factory.mktemp("run")
    save_network(folder / "network-snapshot-000010.safetensors", tiny_unet(seed=1))
    bad = folder / "network-snapshot-000020.safetensors"
    save_network(bad, tiny_unet(seed=2))
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    return folder


def test_corrupt_newest_snapshot_is_named_not_silently_skipped(tmp_path, run_dir, capsys):
    code, err = run_main(capsys, ["generate", "--network", run_dir, "--npz", tmp_path / "s.npz", "--seeds", "0-1",
                                  "--steps", 3, "--no-progress"])
    assert code == 0
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warning) == 1, err
    assert "network-snapshot-000020.safetensors" in warning[0] and "network-snapshot-000010.safetensors" in warning[0]
    assert "sha256" in warning[0]  # says why the newer one was skipped


def test_which_net_refuses_ema_only_files(tmp_path, run_dir, capsys):
    snap = run_dir / "network-snapshot-000010.safetensors"
    before = tree(tmp_path)
    code, err = run_main(capsys, ["generate", "--network", snap, "--which", "net", "--outdir", tmp_path / "o"])
    check_refusal(code, err, before, tmp_path, "--which net", "network snapshot", "training-state")
    code, err = run_main(capsys, ["generate", "--network", run_dir, "--which", "net", "--outdir", tmp_path / "o"])
    check_refusal(code, err, before, tmp_path, "training-state-*.safetensors")


def test_repeated_seeds_generate_each_seed_once(tmp_path, run_dir, capsys):
    net = run_dir / "network-snapshot-000010.safetensors"
    code, err = run_main(capsys, ["generate", "--network", net, "--outdir", tmp_path / "o", "--npz", tmp_path / "s.npz",
                                  "--seeds", "1,1,2,1", "--steps", 3, "--no-progress"])
    assert code == 0 and "repeats seed(s) 1" in err and "generating 2 images" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000001.png", "000002.png"]
    with np.load(tmp_path / "s.npz") as z:
        assert z["seeds"].tolist() == [1, 2] and z["images"].shape[0] == 2


@pytest.mark.parametrize("outputs", [["--outdir", "out"], ["--npz", "out/s.npz"], ["--grid", "g.png"]])
def test_disk_full_during_generation(tmp_path, run_dir, capsys, monkeypatch, outputs):
    """ENOSPC after a few kB: one line naming the problem, nothing left, an existing PNG of the outdir unchanged."""
    net = tmp_path / "net.safetensors"
    shutil.copy(run_dir / "network-snapshot-000010.safetensors", net)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "000003.png").write_bytes(b"an earlier image")
    before = tree(tmp_path)
    disk_full_after(monkeypatch, 600)
    argv = ["generate", "--network", net, "--seeds", "0-7", "--batch", 2, "--steps", 2, "--no-progress",
            *[str(tmp_path / a) if a.startswith(("out", "g.")) else a for a in outputs]]
    code, err = run_main(capsys, argv)
    check_refusal(code, err, before, tmp_path, "No space left on device")


def test_failure_after_folders_were_made_removes_them(tmp_path, run_dir, capsys, monkeypatch):
    """A fault during generation: the nested output folders this run created are removed again."""
    net = run_dir / "network-snapshot-000010.safetensors"
    before = tree(tmp_path)
    disk_full_after(monkeypatch, 0)
    code, err = run_main(capsys, ["generate", "--network", net, "--outdir", tmp_path / "a" / "b" / "c", "--seeds",
                                  "0-1", "--steps", 2, "--no-progress"])
    check_refusal(code, err, before, tmp_path, "No space left on device")
