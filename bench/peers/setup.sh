#!/usr/bin/env bash
# Creates the peer virtual environments for bench/bench_peers.py: NNCF and AIMET-ONNX, each in its own venv,
# never inside the fcnquant package (the peers pin their own versions of shared dependencies).
#
#   bench/peers/setup.sh [DIR]        # DIR default: $FCNQUANT_PEER_VENVS, else /work/venvs
#
# Makes DIR/nncf  (nncf, onnx, onnxruntime==1.32.0, pillow; no torch: nncf's ONNX backend does not need it)
#       DIR/aimet (torch==2.13.0 first, then aimet-onnx under a constraint pinning torch==2.13.0 and
#                  onnxruntime==1.32.0; without the pin pip resolves a CUDA torch and ~20 nvidia wheels)
# Re-running skips a venv whose packages already import. PYTHON picks the interpreter (default python3.11).
set -euo pipefail

DIR="${1:-${FCNQUANT_PEER_VENVS:-/work/venvs}}"
PY="${PYTHON:-python3.11}"
TORCH="torch==2.13.0"
ORT="onnxruntime==1.32.0"
mkdir -p "$DIR"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n%s\n' "$TORCH" "$ORT" > "$constraints"

make_venv() {  # make_venv NAME IMPORT-CHECK
    local venv="$DIR/$1"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$2" >/dev/null 2>&1; then
        echo "== $venv: already set up"
        return 1
    fi
    echo "== creating $venv"
    "$PY" -m venv "$venv"
    return 0
}

if make_venv nncf "import nncf, onnx, onnxruntime, PIL"; then
    "$DIR/nncf/bin/pip" install -q -c "$constraints" nncf onnx "$ORT" pillow
    if "$DIR/nncf/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"; then
        echo "   nncf venv has no torch (as intended)"
    else
        echo "   WARNING: nncf pulled torch into $DIR/nncf" >&2
    fi
fi

if make_venv aimet "import aimet_onnx, torch, onnxruntime"; then
    "$DIR/aimet/bin/pip" install -q "$TORCH"
    "$DIR/aimet/bin/pip" install -q -c "$constraints" aimet-onnx "$ORT"
fi

for v in nncf aimet; do
    "$DIR/$v/bin/python" - "$v" <<'PY'
import importlib.metadata as md, sys
names = {"nncf": ["nncf", "onnx", "onnxruntime", "numpy"], "aimet": ["aimet-onnx", "torch", "onnx", "onnxruntime", "numpy"]}
print(f"   {sys.argv[1]}: " + ", ".join(f"{n} {md.version(n)}" for n in names[sys.argv[1]]))
PY
done
