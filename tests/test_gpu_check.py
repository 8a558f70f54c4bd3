"""scripts/gpu-check.sh --cpu: the CPU-safe parts of the prepared GPU check run and report what they found."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_detector() -> bool:
    from diffspace.errors import CheckpointError
    from diffspace.metrics.features import find_detector

    try:
        find_detector()
    except CheckpointError:
        return False
    return True


@pytest.mark.slow
def test_gpu_check_cpu_mode(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--cpu", "--outdir", str(out),
                          "--budget", "3000"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# diffspace GPU check")
    env_info = data["environment"]
    assert env_info["device"] == "cpu" and env_info["torch"] and env_info["diffspace"]
    parts = data["parts"]
    status = {name: part["status"].split(":")[0] for name, part in parts.items()}
    must_run = ["d. gpu vs cpu agreement", "a. train fp32", "a. train bf16", "c. generate 4 images, heun",
                "c. generate 4 images, dpmpp_2m", "c. per-seed guarantee between batch sizes",
                "f. sampler overhead, near-free denoiser"]
    assert all(status[name] == "ok" for name in must_run), parts
    for name in ("a. train fp16", "a. train fp32 --compile", "b. torchrun nccl"):
        assert status[name] == "skipped", parts[name]
    assert status["e. inception gpu vs cpu"] == ("ok" if _has_detector() else "skipped")
    # What the parts measured: a finite loss for every tick, bit-exact seeds across batch sizes, the
    # CPU-vs-CPU comparison exactly 0 (same device, same kernels), one timing per sampler.
    for prec in ("fp32", "bf16"):
        losses = parts[f"a. train {prec}"]["loss_per_tick"]
        assert len(losses) >= 2 and all(0 < v < 10 for v in losses)
    seed_part = parts["c. per-seed guarantee between batch sizes"]
    assert seed_part["images_bit_exact"] and seed_part["float64_state_max_diff"] == 0
    assert set(parts["d. gpu vs cpu agreement"]["max_rel_diff"].values()) == {0.0}
    assert set(parts["f. sampler overhead, near-free denoiser"]["samplers"]) == {"euler", "heun", "dpmpp_2m"}


def test_gpu_mode_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--outdir", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("gpu_check: error:") and "--cpu" in res.stderr
    assert not (tmp_path / "o").exists()
