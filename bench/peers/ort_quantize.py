"""onnxruntime ``quantize_static`` of a float ONNX model (run with the fcnquant venv's python).

    .venv/bin/python bench/peers/ort_quantize.py MODEL CALIB.npy OUT.onnx [--per-tensor] [--method MinMax]

QDQ, uint8 activations / int8 weights, per-channel weights unless ``--per-tensor``, ``--method`` one of
onnxruntime's calibration methods with its defaults (MinMax unless told). Driven through bench/_common.py's
``ort_quantize_static`` as every bench script drives it. Writes the model and a JSON record (see _peer_io).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
from _peer_io import base_parser, copy_metadata, count_qdq, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per-channel)")
    p.add_argument("--method", default="MinMax", choices=("MinMax", "Entropy", "Percentile", "Distribution"),
                   help="onnxruntime calibration method (default MinMax)")
    args = p.parse_args(argv)

    def quantize(model_path: str, calib, out: str) -> dict:
        import logging

        import onnx
        import onnxruntime

        from _common import ort_quantize_static

        # quantize_static advises its pre-processing on the root logger at WARNING; not an error
        logging.getLogger().addFilter(lambda r: not r.getMessage().startswith("Please consider"))
        timing = ort_quantize_static(model_path, out, (calib[i:i + 1] for i in range(calib.shape[0])),
                                     args.method, per_channel=not args.per_tensor)
        q = onnx.load(out)
        src = onnx.load(model_path, load_external_data=False)
        if {p.key for p in src.metadata_props} - {p.key for p in q.metadata_props}:
            copy_metadata(src, q)
            onnx.save(q, out)
        return {"versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
                "ort_timing": timing, "nodes": count_qdq(q)}

    setting = {"method": args.method, "per_channel": not args.per_tensor,
               "activations": "uint8 asymmetric", "weights": "int8 symmetric"}
    return run("onnxruntime", setting, args, quantize)


if __name__ == "__main__":
    sys.exit(main())
