#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): every CUDA path of diffspace in about 8 minutes on one
# H100/H200-class GPU; writes benchmarks/results/gpu/gpu_check.{json,md}. Usage:
#   bash scripts/gpu-check.sh [--outdir DIR] [--budget SECONDS]     # needs a CUDA build of torch
#   bash scripts/gpu-check.sh --cpu [--outdir DIR]                  # CPU-safe parts, tiny sizes (CI)
# Python: $PYTHON if set, else ./.venv/bin/python if present, else python3; diffspace is taken from ./src.
# Optional pure-Python wheels in ./.whl (e.g. k-diffusion, torchsde, torchdiffeq, trampoline for part f, on a
# machine without package access) are installed with --no-deps into a temporary folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
extra=""
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  extra=":$site"
fi
export PYTHONPATH="$PWD/src$extra${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
