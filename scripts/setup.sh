#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs fcnquant with its test and torch extras.
# torch is pinned to the CPU build first so pip never pulls a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==${FCNQUANT_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[torch,test]"
