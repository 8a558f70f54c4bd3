"""`diffspace train` under faults that used to lose or mix a user's run: every state corrupt, two trainings in one
folder, a foreign state dropped into a run, a state whose tensors do not match its configuration, a full disk, and
argument errors found after the run folder was created. Each case asserts exit status 2, one line on stderr naming
the problem and the fix, and no change to what was there before (hashes)."""

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from diffspace.cli import main
from diffspace.io import checkpoint as ckpt

BASE = ["train", "--data", "toy:gmm8", "--arch", "mlp", "--cbase", "16", "--net-kwargs", '{"num_layers": 1}',
        "--batch", "32", "--lr-rampup", "0.0001", "--tick", "0.5", "--snap", "1", "--dump", "1",
        "--sample-every", "0", "--no-progress"]  # 16 steps per tick; a snapshot and a state every tick


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(tmp_path, name="run", duration="0.0016", extra=()):  # 50 steps: states 000000 and 000001
    run = tmp_path / name
    assert main([*BASE, "--duration", duration, "--outdir", str(run), *extra]) == 0
    return run


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------------
# Data loss 1: --resume latest when every state is corrupt.

def test_resume_latest_refuses_when_every_state_is_corrupt(tmp_path, capsys):
    run = _run(tmp_path)
    states = ckpt.list_checkpoints(run)
    assert len(states) >= 2
    for p in states:
        _flip_byte(p)
    before = _hashes(run)
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", "latest"]) == 2
    err = _err(capsys)
    assert str(run) in err and "--resume PATH" in err and "--outdir" in err
    assert _hashes(run) == before  # snapshots, stats.jsonl, config.json untouched; no lock or log left


def test_resume_latest_refuses_snapshots_without_states(tmp_path, capsys):
    run = _run(tmp_path)
    for p in ckpt.list_checkpoints(run):
        p.unlink()
    before = _hashes(run)
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", "latest"]) == 2
    assert "no training state" in _err(capsys)
    assert _hashes(run) == before


# ---------------------------------------------------------------------------------------------------------------
# Data loss 2: two trainings on one folder.

def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def test_second_trainer_on_the_same_folder_refuses_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    # A long run with a progress bar, its stderr merged into stdout as on a terminal.
    args = [a for a in BASE if a != "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "diffspace", *args, "--duration", "5", "--outdir", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.time() + 300
        while not ckpt.list_checkpoints(run) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert ckpt.list_checkpoints(run), "the first run saved no state"
        lock = json.loads((run / "train.lock").read_text())
        command = json.loads((run / "config.json").read_text())["command"]
        assert command[:4] == ["diffspace", "train", "--data", "toy:gmm8"] and command[-1] == str(run)
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname()
        capsys.readouterr()
        assert main([*BASE, "--duration", "5", "--outdir", str(run), "--resume", "latest"]) == 2
        err = _err(capsys)
        assert f"pid {first.pid}" in err and socket.gethostname() in err and "another --outdir" in err
        assert main([*BASE, "--duration", "5", "--outdir", str(run)]) == 2  # a fresh start is refused too
        _err(capsys)
    finally:
        first.send_signal(signal.SIGKILL)
        out = first.communicate(timeout=60)[0].decode("utf-8", "replace")
    # The "Training" line stands on its own line, before the progress bar.
    training = [line for line in out.replace("\r", "\n").splitlines() if "Training MLP" in line]
    assert len(training) == 1 and training[0].startswith("Training MLP") and "|" not in training[0], out[:2000]
    # The killed run's lock is stale: the next run takes it over, resumes, and removes the lock when done.
    assert (run / "train.lock").exists()
    newest = ckpt.list_checkpoints(run)[0]
    _, state, _ = ckpt.load_training_state(newest)
    kimg = (state["cur_nimg"] + 64) / 1e6
    assert main([*BASE, "--duration", str(kimg), "--outdir", str(run), "--resume", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "taking over the stale lock" in printed and f"Resuming from {newest}" in printed
    assert not (run / "train.lock").exists()


def test_lock_is_exclusive_within_a_host(tmp_path):
    from diffspace.errors import ConfigError
    from diffspace.train.runfolder import RunLock

    held = RunLock(tmp_path, log=lambda s: None).acquire()
    with pytest.raises(ConfigError, match="in use by another diffspace train"):
        RunLock(tmp_path, log=lambda s: None).acquire()
    held.release()
    assert not (tmp_path / "train.lock").exists()
    RunLock(tmp_path, log=lambda s: None).acquire().release()


# ---------------------------------------------------------------------------------------------------------------
# Foreign and mismatched states.

def test_foreign_state_is_not_adopted(tmp_path, capsys):
    run = _run(tmp_path)
    other = _run(tmp_path, "other", extra=["--seed", "9", "--cbase", "24"])
    own = ckpt.list_checkpoints(run)[0]
    foreign = run / "training-state-999999.safetensors"
    shutil.copy(ckpt.list_checkpoints(other)[0], foreign)
    config_before = json.loads((run / "config.json").read_text())
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", "latest"]) == 0
    printed = capsys.readouterr().out
    assert f"skipping {foreign.name} is not from this run" in printed and f"Resuming from {own}" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["network"] == config_before["network"] and config["train"]["seed"] == 0
    assert config["network"]["network"]["kwargs"]["hidden"] == 16
    # Named explicitly, the foreign state is refused for this folder too.
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", str(foreign)]) == 2
    assert "not from the run in" in _err(capsys)


def test_state_whose_tensors_do_not_match_its_config(tmp_path, capsys):
    """A state that says 'U-Net' but holds MLP tensors: a one-line error naming the mismatch, not a RuntimeError."""
    from diffspace.design.precond import build_precond
    from diffspace.io.checkpoint import network_config
    from diffspace.nets import build_network

    run = _run(tmp_path)
    tensors, state, config = ckpt.load_training_state(ckpt.list_checkpoints(run)[0])
    unet_kwargs = {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}
    unet = build_precond("edm", build_network("ddpmpp-small", img_resolution=8, img_channels=1, dropout=0.0,
                                              **unet_kwargs), sigma_data=0.5, img_resolution=8, img_channels=1)
    config["train"].update(data="digits", arch="ddpmpp-small", net_kwargs=unet_kwargs, augment=0.0, dropout=0.0)
    config["network"] = network_config(unet)
    bad = tmp_path / "elsewhere" / "training-state-000640.safetensors"
    bad.parent.mkdir()
    ckpt.save_training_state(bad, tensors, state, config)
    capsys.readouterr()
    assert main(["train", "--resume", str(bad), "--no-progress"]) == 2
    err = _err(capsys)
    assert "SongUNet" in err and "do not fit" in err and str(bad) in err


# ---------------------------------------------------------------------------------------------------------------
# Disk full.

def test_disk_full_at_a_save_keeps_the_previous_state(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    run = _run(tmp_path)
    before = {k: v for k, v in _hashes(run).items() if k.endswith(".safetensors")}
    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # what a full disk leaves: a short file, then the error
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", "latest"]) == 2
    assert "No space left on device" in _err(capsys)
    after = _hashes(run)
    assert {k: v for k, v in after.items() if k.endswith(".safetensors")} == before
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == "train.lock"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main([*BASE, "--duration", "0.0032", "--outdir", str(run), "--resume", "latest"]) == 0


def test_failed_first_save_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert main([*BASE, "--duration", "0.0016", "--outdir", str(tmp_path / "a" / "b" / "run")]) == 2
    assert "No space left on device" in _err(capsys)
    assert not (tmp_path / "a").exists()  # config.json, stats.jsonl, log.txt and the folders it made are gone


def _mount_tmpfs(path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_on_a_real_small_filesystem(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "96k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        capsys.readouterr()
        assert main([*BASE, "--duration", "0.0064", "--outdir", str(disk / "run")]) == 2  # 200 steps: fills up
        assert "No space left on device" in _err(capsys)
        states = ckpt.list_checkpoints(disk / "run") + ckpt.list_checkpoints(disk / "run", "network-snapshot")
        assert states, "the disk filled before the first checkpoint: make the filesystem larger"
        for p in states:
            ckpt.read_tensors(p)  # every checkpoint left is complete (verified digest)
        assert not [n for n in os.listdir(disk / "run") if n.endswith(".tmp") or n == "train.lock"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---------------------------------------------------------------------------------------------------------------
# Argument errors found late leave no folder behind.

@pytest.mark.parametrize("extra,message", [
    (["--data", "/nonexistent/x.zip"], "x.zip"),
    (["--batch-gpu", "5"], "--batch-gpu=5 does not divide"),
    (["--fp16", "--device", "cpu"], "--fp16 needs a CUDA GPU"),
    (["--transfer", "/nonexistent/net.pkl"], "--transfer /nonexistent/net.pkl"),
    (["--net-kwargs", '{"num_layers": 1, "nope": 1}'], "nope"),
])
def test_argument_errors_leave_no_folder(tmp_path, capsys, extra, message):
    out = tmp_path / "a" / "run"
    assert main([*BASE, "--duration", "0.0001", "--outdir", str(out), *extra]) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_torchrun_ranks_refuse_a_locked_folder(tmp_path):
    """Under torchrun rank 0 alone takes the lock (the DDP tests would fail if rank 1 tried: rank 0 holds it) and
    passes a refusal on to every rank: all exit with the message, nothing is written."""
    from diffspace.train.runfolder import RunLock

    run = tmp_path / "run"
    run.mkdir()
    held = RunLock(run, log=lambda s: None).acquire()
    try:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        r = subprocess.run([*torchrun, "-m", "diffspace", *BASE, "--duration", "0.0032", "--outdir", str(run)],
                           capture_output=True, text=True, env=_env(), timeout=600)
    finally:
        held.release()
    assert r.returncode != 0
    assert (r.stdout + r.stderr).count("diffspace train: error:") == 2, r.stdout + r.stderr
    assert "in use by another diffspace train" in r.stderr
    assert os.listdir(run) == []
