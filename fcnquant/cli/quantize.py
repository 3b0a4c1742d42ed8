"""``fcnquant quantize``: emit an int8 QDQ ONNX model from a float model and a calibration table."""
from __future__ import annotations

import argparse

from fcnquant.cli._emission import TARGET_HELP, add_emission_options
from fcnquant.cli._target import TARGET_HELP_SUFFIX, TARGET_METAVAR


def register(sub) -> None:
    """Adds the ``quantize`` subcommand."""
    p = sub.add_parser(
        "quantize",
        help="emit an int8 QDQ ONNX model for a deployment target",
        description="Write an int8 QDQ model: weights int8 symmetric per output channel, int32 biases, activation "
        "scales from the calibration table. Conv+Relu, MaxPool, Resize and skip Adds are quantized as the target "
        "expects; the logits stay float unless --quantize-output.",
    )
    p.add_argument("model", help="float ONNX model (the one the table was calibrated on)")
    p.add_argument("--table", required=True, help="calibration table JSON written by `fcnquant calibrate`")
    p.add_argument("--out", required=True, help="where to write the int8 model, e.g. model.int8.onnx")
    p.add_argument("--target", default="ort-cpu", metavar=TARGET_METAVAR,
                   help=TARGET_HELP + TARGET_HELP_SUFFIX + " (default: %(default)s)")
    add_emission_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant quantize``; returns the exit status."""
    from fcnquant.cli._emission import quant_config
    from fcnquant._io import check_outputs
    from fcnquant.cli._target import print_verdict
    from fcnquant.quantize import quantize_model, tensorrt_cache_path
    from fcnquant.targets import get_target

    quant = quant_config(args, args.model)
    check_outputs({"--out": args.out, "the TensorRT cache": tensorrt_cache_path(args.out)
                   if get_target(quant.target).tensorrt_cache else None}, {"MODEL": args.model, "--table": args.table})
    res = quantize_model(args.model, args.table, args.out, quant)
    print(f"wrote {res.path} ({res.target}, {'per-tensor' if args.per_tensor else 'per-channel'} weights, "
          f"{res.quantized_nodes} int8 nodes, {res.size_bytes / 1e6:.2f} MB)")
    if res.float_nodes:
        print(f"kept in float: {', '.join(res.float_nodes)}")
    if res.tensorrt_cache:
        print(f"wrote {res.tensorrt_cache} (TensorRT calibration cache)")
    print_verdict(res.path, quant.target)
    return 0
