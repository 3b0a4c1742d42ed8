"""Command-line options shared by the commands that emit an int8 model (quantize, calibrate --out, tune)."""
from __future__ import annotations

import argparse

TARGET_HELP = ("ort-cpu: uint8 asymmetric activations; tensorrt: int8 symmetric, and the TensorRT calibration cache "
               "beside the model (model.int8.onnx -> model.int8.cache); npu-pow2: int8 symmetric with power-of-two "
               "scales")


def add_emission_options(g) -> None:
    """Adds --per-tensor, --quantize-output, --exclude, --exclude-op and --pow2-rounding to the group ``g``."""
    g.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per output channel")
    g.add_argument("--quantize-output", action="store_true", help="quantize the logits too (default: float logits)")
    g.add_argument("--exclude", nargs="+", default=[], metavar="NAME_OR_REGEX",
                   help="keep these nodes in float: an exact node name, or a regular expression matching whole "
                        "node names")
    g.add_argument("--exclude-op", nargs="+", default=[], metavar="OP", help="keep every node of these op types in float")
    g.add_argument("--pow2-rounding", choices=("up", "error"), default=None,
                   help="npu-pow2: round scales up to a power of two (never clip past the threshold), or pick the "
                        "neighbouring power of two with the smaller expected error (default: up; error with "
                        "--recover)")


def add_recovery_options(g) -> None:
    """Adds --recover, --equalize, --scale-search, --bias-correction, --adaround and --adaround-iterations to the
    group ``g``."""
    g.add_argument("--recover", action="store_true",
                   help="turn on every recovery pass that helps on the target: power-of-two scales by error "
                        "(npu-pow2), cross-layer equalization (with --per-tensor) and bias correction; "
                        "AdaRound only with --adaround")
    g.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="cross-layer equalization of the float model before calibration; the equalized float "
                        "model is written beside --out (OUT.equalized.onnx)")
    g.add_argument("--scale-search", action=argparse.BooleanOptionalAction, default=None,
                   help="npu-pow2: re-choose each activation's power-of-two scale (of its two neighbours) by the "
                        "int8 model's output error on calibration images, then emit again (default: off; 3-4x the time, no "
                        "measured mIoU gain on the demo models)")
    g.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="empirical bias correction, layer by layer, on the calibration images")
    g.add_argument("--bias-correction-error", choices=("weights", "accumulated", "auto"), default=None,
                   help="what bias correction cancels: each layer's own weight rounding (weights, the default), the "
                        "whole accumulated mean error (accumulated), or both tried and the one with the smaller "
                        "output error kept (auto)")
    g.add_argument("--adaround", action=argparse.BooleanOptionalAction, default=None,
                   help="AdaRound: learn each Conv's weight rounding (floor or ceil) on the calibration images")
    g.add_argument("--adaround-iterations", type=int, metavar="N", help="AdaRound steps per layer (default 1000)")


def exclusions(args: argparse.Namespace, model_path) -> tuple[list[str], list[str]]:
    """Returns (exact node names, regular expressions) from --exclude, resolved against the model's nodes."""
    if not args.exclude:
        return [], []
    from fcnquant._io import load_onnx
    from fcnquant.quantize.exclude import name_unnamed_nodes, split_names_and_patterns

    model = load_onnx(model_path)
    name_unnamed_nodes(model)
    return split_names_and_patterns(args.exclude, model)


def quant_config(args: argparse.Namespace, model_path, **changes):
    """Returns the QuantConfig of the parsed emission options (--exclude resolved against ``model_path``)."""
    from fcnquant.quantize import QuantConfig

    from fcnquant.cli._target import resolve_target

    names, patterns = exclusions(args, model_path) if model_path else ([], [])
    values = dict(target=resolve_target(args.target), per_channel=not args.per_tensor, quantize_output=args.quantize_output,
                  exclude_nodes=names, exclude_ops=args.exclude_op, exclude_regex=patterns,
                  pow2_rounding=args.pow2_rounding or "up")
    if hasattr(args, "method"):
        values["method"] = args.method
    values.update(changes)
    return QuantConfig(**values)
