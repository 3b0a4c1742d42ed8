"""NNCF post-training quantization of a float ONNX model (run with the NNCF venv's python; no fcnquant import).

    /work/venvs/nncf/bin/python bench/peers/nncf_quantize.py MODEL CALIB.npy OUT.onnx [--per-tensor]
        [--no-fast-bias-correction]

``nncf.quantize`` with its defaults (preset ``performance``: symmetric int8 weights and activations, per-channel
weights, fast bias correction) and ``subset_size`` = every calibration image. ``--per-tensor``: one weight scale
per tensor (the closest NNCF setting to a strict accelerator). ``--no-fast-bias-correction``: NNCF's layer-wise
BiasCorrection instead of FastBiasCorrection. Writes the QDQ model NNCF returns and a JSON record (see _peer_io).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_io import base_parser, copy_metadata, count_qdq, run, save_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per-channel)")
    p.add_argument("--no-fast-bias-correction", action="store_true",
                   help="layer-wise BiasCorrection (fast_bias_correction=False) instead of FastBiasCorrection")
    args = p.parse_args(argv)

    def quantize(model_path: str, calib, out: str) -> dict:
        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

        model = onnx.load(model_path)
        input_name = model.graph.input[0].name
        data = nncf.Dataset([calib[i:i + 1] for i in range(calib.shape[0])], lambda x: {input_name: x})
        advanced = None
        if args.per_tensor:
            advanced = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(
                per_channel=False))
        q = nncf.quantize(model, data, subset_size=calib.shape[0],
                          fast_bias_correction=not args.no_fast_bias_correction, advanced_parameters=advanced)
        copy_metadata(model, q)
        save_model(q, out)
        return {"versions": {"nncf": nncf.__version__, "onnx": onnx.__version__}, "nodes": count_qdq(q)}

    setting = {"per_channel": not args.per_tensor, "fast_bias_correction": not args.no_fast_bias_correction,
               "preset": "performance (default)"}
    return run("nncf", setting, args, quantize)


if __name__ == "__main__":
    sys.exit(main())
