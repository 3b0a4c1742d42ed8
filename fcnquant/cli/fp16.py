"""``fcnquant fp16``: convert a float32 ONNX model to float16."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    """Adds the ``fp16`` subcommand."""
    p = sub.add_parser(
        "fp16",
        help="convert a model's weights and ops to float16",
        description="Convert to float16 with onnxruntime's converter. Initializers beyond the float16 range are "
        "clamped to +-65504 and listed.",
    )
    p.add_argument("model", help="float32 ONNX model")
    p.add_argument("--out", required=True, help="where to write the float16 model, e.g. model.fp16.onnx")
    p.add_argument("--keep-io-fp32", action="store_true", help="keep the model's inputs and outputs float32")
    p.add_argument("--block-op", nargs="+", default=[], metavar="OP", help="op types to leave in float32, e.g. Resize")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant fp16``; returns the exit status."""
    from fcnquant._io import check_outputs
    from fcnquant.quantize import convert_fp16

    check_outputs({"--out": args.out}, {"MODEL": args.model})
    res = convert_fp16(args.model, args.out, keep_io_fp32=args.keep_io_fp32, block_ops=args.block_op)
    for name, value in sorted(res.clamped.items()):
        print(f"clamped {name}: max |x| {value:.6g} -> 65504")
    print(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {res.size_bytes / res.source_size_bytes:.2f}x the fp32 file)")
    return 0
