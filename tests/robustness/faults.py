"""Shared pieces of the fault matrix: tiny real inputs (a U-Net checkpoint, PNG folders, a feature network), the
checks every failure must pass (exit code, one line on stderr, no traceback, no new or changed file), and fault
injection (read-only folders, a full disk, a blocked package, a kill at a moment of the run)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffspace

SRC = str(Path(diffspace.__file__).resolve().parents[1])  # subprocesses run the diffspace these tests import


# ---------------------------------------------------------------------------------------------------------------
# Inputs.

def tiny_unet(seed: int = 0, label_dim: int = 0):
    """A small EDM-preconditioned SongUNet (8×8 gray) with O(1) random weights, so images differ per seed."""
    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network

    torch.manual_seed(seed)
    net = build_network("ddpmpp-small", img_resolution=8, img_channels=1, label_dim=label_dim, model_channels=8,
                        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    p = EDMPrecond(net, label_dim=label_dim)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(0.2 * torch.randn(q.shape, generator=g))
    return p.eval()


def png_folder(path: Path, n: int = 6, seed: int = 0, size: int = 8) -> Path:
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(path / f"{i:06d}.png")
    return path


def feature_net(path: Path) -> Path:
    from diffspace.metrics.smallfeat import FeatureNet, save_feature_net

    torch.manual_seed(0)
    save_feature_net(FeatureNet(1, 8, 10, width=4, feature_dim=8), path, dataset="toy")
    return path


# ---------------------------------------------------------------------------------------------------------------
# What every failure must look like.

def tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under root (hidden ones included), '<dir>' for folders."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_refusal(code: int, err: str, before: dict, root: Path, *needles: str) -> None:
    """Non-zero exit, exactly one error line on stderr, naming every needle, as the last line (progress lines
    printed before the fault struck may precede it), no traceback, nothing created, removed or changed under
    root (hidden files included)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0, err
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and lines and lines[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], f"{n!r} not in: {errors[0]}"
    after = tree(root)
    assert after == before, f"files changed: added {sorted(set(after) - set(before))}, removed " \
                            f"{sorted(set(before) - set(after))}, changed " \
                            f"{sorted(k for k in set(after) & set(before) if after[k] != before[k])}"


def run_main(capsys, argv: list) -> tuple[int, str]:
    """diffspace.cli.main in this process; (exit code, stderr). argparse errors (SystemExit) count as exits."""
    from diffspace.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Fault injection.

def fail_writes_in(monkeypatch, folder: Path, err: int = errno.EACCES) -> None:
    """Make every attempt to create a file under `folder` fail with OSError(err), whoever runs the tests (chmod
    alone does not stop root): the folder is made read-only and file creation is refused at os.open/open."""
    import builtins

    folder = Path(folder).resolve()
    folder.chmod(0o555)
    real_open, real_os_open = builtins.open, os.open

    def inside(path) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(folder)
        except (TypeError, ValueError):
            return False

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wxa+") and inside(file):
            raise OSError(err, os.strerror(err), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    import io

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", _refuse_mkdir(os.mkdir, inside, err))


def _refuse_mkdir(real, inside, err):
    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real(path, *args, **kwargs)

    return mkdir


def disk_full_after(monkeypatch, nbytes: int) -> None:
    """Simulate a disk that fills up: once `nbytes` have been written through Python file objects opened for
    writing, every further write raises OSError(ENOSPC)."""
    import builtins

    real_open = builtins.open
    budget = [nbytes]

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            budget[0] -= len(data)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(self._f, "name", None))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __iter__(self):
            return iter(self._f)

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if any(c in mode for c in "wxa+") else f

    import io

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)


BLOCKER = """
import sys
BLOCKED = {blocked!r}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


def cli_env(tmp_path: Path, blocked: tuple[str, ...] = ()) -> dict:
    """Environment of a `python -m diffspace` subprocess with this checkout first on the path; packages in
    `blocked` cannot be imported (a sitecustomize installs a meta-path finder that refuses them)."""
    paths = [SRC]
    if blocked:
        site = tmp_path.parent / f"{tmp_path.name}-blocker-site"  # outside the folder the tests compare
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=tuple(blocked)))
        paths.insert(0, str(site))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return env


def cli(tmp_path: Path, *argv, blocked: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffspace", *map(str, argv)], capture_output=True, text=True,
                          env=cli_env(tmp_path, blocked), timeout=timeout, cwd=tmp_path)


def start_cli(tmp_path: Path, *argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffspace", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path), cwd=tmp_path)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until predicate() holds (the run reached the moment to kill it); fail if the process ended first."""
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the kill moment: {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the run never reached the kill moment")
        time.sleep(0.02)
