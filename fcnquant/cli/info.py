"""``fcnquant info``: what a model is (inputs, outputs, precision), its unique parameters and its MACs/FLOPs."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    """Adds the ``info`` subcommand."""
    p = sub.add_parser(
        "info", help="inputs/outputs, precision, unique parameters, MACs and FLOPs of an ONNX model",
        description="Reads MODEL's graph: input and output names and shapes, opset, precision (float32, fp16, int8 "
                    "QDQ with its target and table hash), quantized activations and weights, unique parameters "
                    "(shared initializers once) and the MACs/FLOPs of Conv, ConvTranspose, Gemm and MatMul per op "
                    "type at the model's input size (FLOPs = 2 x MACs; see docs/info.md).")
    p.add_argument("model", metavar="MODEL", help="ONNX model")
    p.add_argument("--size", type=int, nargs="+", metavar="PX", help="count at this input size: one side for a "
                   "square, or HEIGHT WIDTH (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints the model's info; returns the exit status."""
    import json

    from fcnquant.errors import FcnquantError
    from fcnquant.info import model_info

    if args.size is not None and len(args.size) not in (1, 2):
        raise FcnquantError(f"--size takes one or two numbers, got {len(args.size)}")
    size = None if args.size is None else (args.size[0] if len(args.size) == 1 else tuple(args.size))
    info = model_info(args.model, size)
    print(json.dumps(info.to_dict(), indent=1) if args.json else info.format_text())
    return 0
