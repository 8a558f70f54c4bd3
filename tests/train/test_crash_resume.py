"""Crash test: `diffspace train` killed with SIGKILL at random points and resumed ends with weights bit-identical
to an uninterrupted run with the same seed (single process, CPU)."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from diffspace.io import checkpoint as ckpt

ARGS = ["--data", "toy:gmm8", "--arch", "mlp", "--cbase", "32", "--net-kwargs", '{"num_layers": 2}',
        "--batch", "64", "--duration", "0.0192", "--lr", "2e-3", "--lr-rampup", "0.001", "--ema", "0.002",
        "--tick", "1", "--snap", "1", "--dump", "1", "--sample-every", "0", "--seed", "7", "--no-progress",
        "--resume", "latest"]  # 300 steps; a state every 16 steps (1 kimg)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _launch(outdir):
    return subprocess.Popen([sys.executable, "-m", "diffspace", "train", *ARGS, "--outdir", str(outdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def _run_with_kill(outdir, rng, kill: bool, log: list[str]) -> int:
    """Start a run; if `kill`, SIGKILL it at a random point after its tick-k line, k drawn from 2..14.

    A state is saved at every tick from 1 on, so a run killed there has one to resume from, and at least five
    ticks remain, so the kill lands before the run ends even on a slow machine. Returns the exit code."""
    proc = _launch(outdir)
    kill_tick = rng.randint(2, 14) if kill else None
    delay = rng.uniform(0.0, 0.05) if kill else 0.0  # lands anywhere within the tick, a state write included

    def reader():
        for line in proc.stdout:
            log.append(line.rstrip())
            if kill_tick is not None and line.split()[:2] == ["tick", str(kill_tick)]:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    rc = proc.wait(timeout=600)
    t.join(timeout=10)
    return rc


def _final(outdir):
    path = ckpt.list_checkpoints(outdir)[0]
    tensors, state, _ = ckpt.load_training_state(path)
    snap = ckpt.read_tensors(ckpt.list_checkpoints(outdir, "network-snapshot")[0])[0]
    return path.name, tensors, state, snap


def _crash_trials(tmp_path, trials: int, kills: int, seed: int):
    ref_log: list[str] = []
    assert _run_with_kill(tmp_path / "ref", None, False, ref_log) == 0, "\n".join(ref_log[-20:])
    ref_name, ref, ref_state, ref_snap = _final(tmp_path / "ref")
    assert ref_state["step"] == 300
    rng = random.Random(seed)
    for trial in range(trials):
        out = tmp_path / f"crash{trial}"
        log: list[str] = []
        killed = 0
        for _ in range(kills):
            rc = _run_with_kill(out, rng, True, log)
            killed += rc == -signal.SIGKILL
            if rc == 0:
                break
        if not (out / "training-state-000019.safetensors").exists():
            assert _run_with_kill(out, rng, False, log) == 0, "\n".join(log[-20:])
        assert killed >= 1, "no run was killed before it finished"
        assert any(line.startswith("Resuming from") for line in log), "no run resumed from a saved state"
        name, got, state, snap = _final(out)
        assert name == ref_name and state["step"] == 300
        assert got.keys() == ref.keys()
        for k in ref:  # network, EMA, Adam moments, RNG states: bit for bit
            assert torch.equal(got[k], ref[k]), f"trial {trial}: {k} differs"
        assert snap.keys() == ref_snap.keys() and all(torch.equal(snap[k], ref_snap[k]) for k in snap)
        assert not list(out.glob(".*.tmp"))


def test_sigkill_and_resume_bit_identical(tmp_path):
    _crash_trials(tmp_path, trials=1, kills=1, seed=0)


@pytest.mark.slow
def test_sigkill_and_resume_bit_identical_many_trials(tmp_path):
    _crash_trials(tmp_path, trials=4, kills=2, seed=1)
