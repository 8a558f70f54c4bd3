"""Kills at drawn moments and concurrent writers, with real processes (`python -m diffspace`).

Whatever the moment of a SIGTERM, the output is either absent or complete and nothing hidden stays behind; after a
SIGKILL (which no process can handle) the output is absent or complete, pre-existing files are unchanged, and
the next run removes what the dead one left. Two writers of the same output never mix their results.
"""

from __future__ import annotations

import random
import signal
import time
import zipfile

import pytest

from diffspace.data import open_dataset
from diffspace.io.checkpoint import save_network

from .faults import cli, png_folder, start_cli, tiny_unet, tree, wait_for

pytestmark = pytest.mark.slow

MOMENTS = random.Random(2026).sample(range(5, 40), 2)  # tenths of a second after the command started


def _hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


def _complete_zip(path, count):
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert len([n for n in z.namelist() if n.endswith(".png")]) == count


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("tenths", MOMENTS)
def test_dataset_killed_at_any_moment(tmp_path, sig, tenths):
    keep = png_folder(tmp_path / "keep", n=2)
    before = tree(keep)
    dest = tmp_path / "out" / "digits.zip"
    argv = ["dataset", "--source", "digits", "--dest", dest, "--resolution", 32, "--transform", "resize"]
    proc = start_cli(tmp_path, *argv)
    time.sleep(tenths / 10)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    if dest.exists():  # it finished before the signal: then the archive is whole
        _complete_zip(dest, 1797)
    if sig == signal.SIGTERM:
        # 143: the run cleaned up; -15: the signal came while Python itself was starting, before diffspace
        # could handle it (nothing was written yet).
        assert proc.returncode in (0, 143, -15), err
        if proc.returncode == -15:
            assert not (tmp_path / "out").exists()
        assert not (tmp_path / "out").exists() or _hidden(tmp_path / "out") == []
    assert tree(keep) == before
    if not dest.exists():  # the next run completes and removes what a killed one left
        r = cli(tmp_path, *argv)
        assert r.returncode == 0, r.stderr
        _complete_zip(dest, 1797)
        assert _hidden(tmp_path / "out") == []


@pytest.mark.parametrize("tenths", MOMENTS)
def test_generate_sigterm_at_any_moment(tmp_path, tenths):
    ckpt = tmp_path / "net.safetensors"
    save_network(ckpt, tiny_unet())
    out = tmp_path / "out"
    png_folder(out, n=2, seed=7)  # earlier images, with other seeds' names
    (out / "000000.png").rename(out / "earlier-a.png")
    (out / "000001.png").rename(out / "earlier-b.png")
    before = tree(out)
    proc = start_cli(tmp_path, "generate", "--network", ckpt, "--outdir", out, "--seeds", "0-39", "--batch", 4,
                     "--steps", 4, "--no-progress")
    time.sleep(tenths / 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 143, -15), err  # -15: killed while Python was starting (nothing written)
    names = sorted(p.name for p in out.iterdir())
    new = [n for n in names if n not in before]
    assert new in ([], [f"{s:06d}.png" for s in range(40)]), new  # all or nothing, no hidden staging folder
    assert {k: v for k, v in tree(out).items() if k in before} == before


def test_two_dataset_writers_never_mix(tmp_path):
    a, b = png_folder(tmp_path / "a", n=40, seed=1), png_folder(tmp_path / "b", n=30, seed=2)
    dest = tmp_path / "out.zip"
    procs = [start_cli(tmp_path, "dataset", "--source", src, "--dest", dest) for src in (a, b)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code in (0, 2) for code, _ in results) and any(code == 0 for code, _ in results), results
    for code, err in results:
        assert "Traceback" not in err
        if code == 2:  # the later one saw the finished archive and refused to replace it
            assert "already exists" in err
    n = len(open_dataset(dest))
    assert n in (40, 30)
    _complete_zip(dest, n)
    assert _hidden(tmp_path) == []


def test_two_generate_writers_into_one_folder(tmp_path):
    ckpt = tmp_path / "net.safetensors"
    save_network(ckpt, tiny_unet())
    out = tmp_path / "out"
    procs = [start_cli(tmp_path, "generate", "--network", ckpt, "--outdir", out, "--seeds", seeds, "--batch", 2,
                       "--steps", 3, "--no-progress") for seeds in ("0-5", "6-11")]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == [f"{s:06d}.png" for s in range(12)]
    assert len(open_dataset(out)) == 12


def test_generate_sigkill_then_concurrent_run_keeps_live_stage(tmp_path):
    """A run that starts while another is writing keeps the live run's staging folder (only dead ones go)."""
    ckpt = tmp_path / "net.safetensors"
    save_network(ckpt, tiny_unet())
    out = tmp_path / "out"
    slow = start_cli(tmp_path, "generate", "--network", ckpt, "--outdir", out, "--seeds", "100-2099", "--batch", 2,
                     "--steps", 4, "--no-progress")
    wait_for(lambda: any(out.glob(".generate-*/*.png")), slow)
    r = cli(tmp_path, "generate", "--network", ckpt, "--outdir", out, "--seeds", "0-1", "--steps", 3,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert any(out.glob(".generate-*/*.png")), "the live run's staging folder was removed"
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(timeout=60) == 143
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]
