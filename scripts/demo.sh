#!/usr/bin/env bash
# Sets everything up (./.venv) and runs the main job on the built-in demo:
# calibrate the shipped fcn8s with KL on the synthetic VOC, emit int8 + fp16, compare both with fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --core
exec .venv/bin/fcnquant demo "$@"
