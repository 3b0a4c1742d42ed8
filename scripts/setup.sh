#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs fcnquant.
#   bash scripts/setup.sh          core + test extras + torch's CPU build (what the test suite needs)
#   bash scripts/setup.sh --core   the core only: calibrate, quantize, eval, compare, tune, demo (no torch)
# torch comes from PyTorch's own CPU wheel index, as PyTorch's install instructions give it: a plain
# `pip install torch` on Linux pulls the CUDA build (several GB). Where that index cannot be reached (a machine
# that only reaches PyPI), the plain pin is installed instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${FCNQUANT_TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "--core" ]; then
  .venv/bin/python -m pip install -q -e .
  exit 0
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --timeout 15 --retries 0 "torch==${TORCH}" \
      --index-url https://download.pytorch.org/whl/cpu >/dev/null 2>&1 \
    || .venv/bin/python -m pip install -q "torch==${TORCH}"
fi
.venv/bin/python -m pip install -q -e ".[torch,test]"
