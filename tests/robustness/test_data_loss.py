"""Regression tests of the data-loss cases found by the fault matrix (each failed before its fix):

- a `generate` run killed by SIGKILL leaves its hidden `.generate-*` staging folder, which `dataset` and `fid`
  then counted as images and later runs kept; SIGTERM left it too;
- `dataset --dest EXISTING.zip` (and `fid ref --dest`) silently replaced the existing file;
- a missing package (safetensors, pillow, matplotlib, scikit-learn) was found only when the command needed it,
  e.g. at the first checkpoint save after the whole training run.
"""

from __future__ import annotations

import signal
import zipfile

import numpy as np
import pytest

from diffspace.data import open_dataset
from diffspace.io.checkpoint import save_network
from diffspace.metrics.images import open_images

from .faults import check_refusal, cli, feature_net, png_folder, run_main, start_cli, tiny_unet, tree, wait_for


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "network-snapshot-000000.safetensors"
    save_network(path, tiny_unet())
    return path


def _slow_run(tmp_path, ckpt, out):
    """A generate run that writes PNGs into its staging folder batch by batch for a long time."""
    return start_cli(tmp_path, "generate", "--network", ckpt, "--outdir", out, "--seeds", "100-20099", "--batch", 2,
                     "--micro-batch", 2, "--steps", 4, "--no-progress")


@pytest.mark.slow
def test_generate_sigkill_leftovers_are_ignored_then_removed(tmp_path, ckpt, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, ["generate", "--network", ckpt, "--outdir", out, "--seeds", "0-3", "--steps", 4,
                             "--no-progress"])[0] == 0
    proc = _slow_run(tmp_path, ckpt, out)
    wait_for(lambda: len(list(out.glob(".generate-*/*.png"))) >= 4, proc)
    proc.kill()  # SIGKILL: the process cannot clean up
    proc.wait()
    assert list(out.glob(".generate-*")), "the killed run should have left its staging folder"
    # Every image reader sees the 4 real images only, not the killed run's staged ones.
    assert len(open_dataset(out)) == 4
    assert len(open_images(out)) == 4
    code, _ = run_main(capsys, ["dataset", "--source", out, "--dest", tmp_path / "d.zip"])
    assert code == 0
    with zipfile.ZipFile(tmp_path / "d.zip") as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == 4
    # The next run into the same folder removes the dead run's folder and says so.
    code, err = run_main(capsys, ["generate", "--network", ckpt, "--outdir", out, "--seeds", "4-5", "--steps", 4,
                                  "--no-progress"])
    assert code == 0 and "killed runs" in err
    assert sorted(p.name for p in out.iterdir()) == [f"{s:06d}.png" for s in range(6)]


@pytest.mark.slow
def test_generate_sigterm_cleans_up(tmp_path, ckpt):
    out = tmp_path / "new" / "out"
    proc = _slow_run(tmp_path, ckpt, out)
    wait_for(lambda: len(list(out.glob(".generate-*/*.png"))) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists(), "the folders the run created should be gone"


def test_stale_stage_of_dead_process_removed_live_one_kept(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from diffspace.cli.generate import remove_stale_stages

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    for name, pid in ((".generate-dead", int(dead.stdout)), (".generate-live", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "owner.json").write_text(json.dumps({"pid": pid, "host": host}))
    (tmp_path / ".generate-other-host").mkdir()
    (tmp_path / ".generate-other-host" / "owner.json").write_text(json.dumps({"pid": 1, "host": host + "-x"}))
    removed = remove_stale_stages(tmp_path)
    assert [p.name for p in removed] == [".generate-dead"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".generate-live", ".generate-other-host"]


def test_readers_skip_hidden_entries(tmp_path):
    folder = png_folder(tmp_path / "imgs", n=3)
    png_folder(folder / ".generate-abc", n=5, seed=1)
    png_folder(folder / "sub", n=2, seed=2)
    (folder / ".000009.png").write_bytes((folder / "000000.png").read_bytes())
    assert len(open_dataset(folder)) == 5  # 3 + sub/2
    from diffspace.data.tool import convert

    assert convert(folder, tmp_path / "o.zip").count == 5


@pytest.mark.parametrize("extra", [[], ["--force"]])
def test_dataset_refuses_to_replace_existing_zip(tmp_path, capsys, extra):
    dest = tmp_path / "data.zip"
    assert run_main(capsys, ["dataset", "--source", png_folder(tmp_path / "a", n=6), "--dest", dest])[0] == 0
    small = png_folder(tmp_path / "b", n=2, seed=5)
    before = tree(tmp_path)
    code, err = run_main(capsys, ["dataset", "--source", small, "--dest", dest, *extra])
    if not extra:
        check_refusal(code, err, before, tmp_path, str(dest), "already exists", "--force")
    else:
        assert code == 0 and len(open_dataset(dest)) == 2


def test_fid_ref_refuses_to_replace_existing_reference(tmp_path, capsys):
    net = feature_net(tmp_path / "f.safetensors")
    imgs = png_folder(tmp_path / "imgs", n=6)
    dest = tmp_path / "ref.npz"
    argv = ["fid", "ref", "--data", imgs, "--dest", dest, "--features", net, "--quiet"]
    assert run_main(capsys, argv)[0] == 0
    before = tree(tmp_path)
    code, err = run_main(capsys, argv)
    check_refusal(code, err, before, tmp_path, str(dest), "already exists", "--force")
    png_folder(imgs, n=8, seed=3)
    assert run_main(capsys, [*argv, "--force"])[0] == 0
    with np.load(dest) as z:
        assert z["features"].shape == (8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Missing packages: refused at once, in one line naming the extra, before any output.

@pytest.mark.parametrize("blocked,argv,needles", [
    (("safetensors",), ["train", "--data", "toy:gmm8", "--arch", "mlp", "--outdir", "run", "--batch", 32,
                        "--duration", 0.0002, "--tick", 0.1, "--no-progress"], ["safetensors", "pip install"]),
    (("PIL",), ["generate", "--network", "CKPT", "--outdir", "run", "--seeds", "0-1"], ["pillow", "pip install"]),
    (("PIL",), ["dataset", "--source", "imgs", "--dest", "run/d.zip"], ["pillow"]),
    (("sklearn",), ["dataset", "--source", "digits", "--dest", "run/d.zip"], ["scikit-learn", "diffspace[eval]"]),
    (("matplotlib",), ["converge", "--problem", "gaussian", "--samplers", "euler", "--steps", "4,8",
                       "--outdir", "run"], ["matplotlib", "diffspace[plot]", "--no-plot"]),
])
def test_missing_package_refused_before_any_work(tmp_path, ckpt, blocked, argv, needles):
    png_folder(tmp_path / "imgs", n=3)
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    before = tree(tmp_path)
    r = cli(tmp_path, *argv, blocked=blocked)
    check_refusal(r.returncode, r.stderr, before, tmp_path, *needles)
    assert not (tmp_path / "run").exists()


def test_required_packages_are_dependencies():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert {"torch", "numpy", "pillow", "safetensors", "tqdm"} <= names
    from diffspace.deps import PACKAGE

    extras = project["optional-dependencies"]
    for module, (package, extra) in PACKAGE.items():  # every hint names an extra that brings the package
        if extra is not None:
            assert any(r.startswith(package) for r in extras[extra]), (module, extra)
