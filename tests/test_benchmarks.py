"""Every benchmark script runs in its --quick mode, so none can silently stop working.

Scripts are found by glob (a new benchmark is covered without editing this file). Each runs in a subprocess from a
temporary working directory; the committed results under benchmarks/results must be untouched afterwards (quick
runs write to a temporary folder). The scripts take tens of seconds each on a shared 2-core machine: slow.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# gpu_check.py's quick mode is run by tests/test_gpu_check.py (through scripts/gpu-check.sh --cpu, with checks of
# what it writes); shared helpers live in benchmarks/lib/.
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "gpu_check.py")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_benchmarks_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"train_throughput.py", "compare_k_diffusion.py", "empirical_speed.py", "lownfe_peers.py"} <= names
    assert (ROOT / "benchmarks" / "gpu_check.py").exists() and "gpu_check.py" not in names


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_quick_mode_runs(script, tmp_path):
    results = ROOT / "benchmarks" / "results"
    before = _snapshot(results)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, f"{script.name} --quick failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert _snapshot(results) == before, f"{script.name} --quick changed the committed results"
