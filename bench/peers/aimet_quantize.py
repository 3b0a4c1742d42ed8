"""AIMET-ONNX post-training quantization of a float ONNX model (run with the AIMET venv's python; no fcnquant import).

    /work/venvs/aimet/bin/python bench/peers/aimet_quantize.py MODEL CALIB.npy OUT.onnx
        [--scheme min_max|tf_enhanced] [--cle] [--adaround N] [--per-tensor]

``QuantizationSimModel`` (int8 weights and activations) with AIMET's default config (``config_file=None``, which
aimet-onnx 2.42 resolves to ``default_config_per_channel.json``: symmetric per-channel Conv weights, asymmetric
activations, Conv+Relu / Add+Relu supergroups); ``--per-tensor`` uses its ``default_config.json`` instead (the same
rules, one weight scale per tensor). ``--cle``: ``aimet_onnx.cross_layer_equalization.equalize_model`` on the float
model first (batch-norm folding, cross-layer scaling, high-bias fold). ``--adaround N``: ``aimet_onnx.apply_adaround``
with N iterations per layer (AIMET's default is 10000) before the activation encodings are computed. Activation
encodings come from ``sim.compute_encodings`` over every calibration image; the model written is
``sim.to_onnx_qdq()`` (QuantizeLinear/DequantizeLinear, activations as uint8, weights int8 float + Q + DQ).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_io import base_parser, copy_metadata, count_qdq, run, save_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--scheme", choices=("min_max", "tf_enhanced"), default="min_max",
                   help="AIMET quant scheme for the encodings (default min_max, AIMET's default)")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization of the float model first")
    p.add_argument("--adaround", type=int, default=0, metavar="N",
                   help="apply AdaRound with N iterations per layer (0: off, the default)")
    p.add_argument("--per-tensor", action="store_true",
                   help="AIMET's per-tensor default_config.json instead of the per-channel default")
    args = p.parse_args(argv)

    def quantize(model_path: str, calib, out: str) -> dict:
        import os
        import tempfile

        import onnx

        import aimet_onnx
        from aimet_onnx.quantsim import QuantizationSimModel

        model = onnx.load(model_path)
        meta = onnx.ModelProto()
        meta.CopyFrom(model)
        input_name = model.graph.input[0].name
        inputs = [{input_name: calib[i:i + 1]} for i in range(calib.shape[0])]
        if args.cle:
            from aimet_onnx.cross_layer_equalization import equalize_model

            equalize_model(model)  # in place
        config = None
        if args.per_tensor:
            import aimet_onnx.common.quantsim_config as cfg

            config = os.path.join(os.path.dirname(cfg.__file__), "default_config.json")
        with tempfile.TemporaryDirectory(prefix="aimet-sim-") as tmp:
            sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", quant_scheme=args.scheme,
                                       config_file=config, path=tmp)
            if args.adaround:
                aimet_onnx.apply_adaround(sim, inputs, num_iterations=args.adaround)
            sim.compute_encodings(inputs)
            q = sim.to_onnx_qdq()
        copy_metadata(meta, q)
        save_model(q, out)
        return {"versions": {"aimet_onnx": aimet_onnx.__version__, "onnx": onnx.__version__},
                "config_file": config or "default (default_config_per_channel.json)", "nodes": count_qdq(q)}

    setting = {"scheme": args.scheme, "cle": args.cle, "adaround_iterations": args.adaround,
               "per_channel": not args.per_tensor}
    return run("aimet", setting, args, quantize)


if __name__ == "__main__":
    sys.exit(main())
