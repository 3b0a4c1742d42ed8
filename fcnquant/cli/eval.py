"""``fcnquant eval``: mIoU of an ONNX segmentation model on a VOC-style split."""
from __future__ import annotations

import argparse
import json

from fcnquant.errors import FcnquantError


def register(sub) -> None:
    """Adds the ``eval`` subcommand to ``sub``."""
    from fcnquant.cli._distributed import add_provider_option, add_ray_options
    from fcnquant.cli._options import add_data_options

    p = sub.add_parser("eval", help="evaluate mIoU of an ONNX model on a VOC-style split",
                       description="Runs MODEL on a labelled split and prints per-class IoU, mIoU (mmseg and "
                                   "awesome conventions), pixel accuracy and images/s.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    add_data_options(p)
    p.add_argument("--ids", metavar="FILE", help="evaluate only the ids listed in FILE (one per line)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.add_argument("--emulate", action="store_true", help="score MODEL (an int8 QDQ model) as the target's integer "
                   "arithmetic computes it (docs/emulation.md) and report its disagreement with onnxruntime's "
                   "simulation: pixels whose class differs, largest difference in LSBs per layer")
    p.add_argument("--target", metavar="T", help="with --emulate: the target whose arithmetic is emulated "
                   "(default: the one recorded in MODEL, else npu-pow2)")
    add_ray_options(p)
    add_provider_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates and prints the table."""
    from fcnquant.cli._distributed import executor_from_args
    from fcnquant.cli._options import data_config, run_config
    from fcnquant._io import check_outputs
    from fcnquant.evaluate import evaluate

    check_outputs({"--json": args.json}, {"MODEL": args.model, "--ids": args.ids})
    if args.target is not None and not args.emulate:
        raise FcnquantError("--target is used with --emulate")
    data = data_config(args)
    if args.emulate:
        return _run_emulated(args, data)
    with executor_from_args(args, progress=not args.no_progress) as executor:
        result = evaluate(args.model, data, run_config(args, executor))
    print(result.format_table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _run_emulated(args: argparse.Namespace, data) -> int:
    """Scores the emulated model, prints its table and its disagreement with onnxruntime."""
    from fcnquant._io import atomic_write_text
    from fcnquant.cli._distributed import executor_from_args
    from fcnquant.cli._options import run_config
    from fcnquant.emulate.measure import emulate_eval

    with executor_from_args(args, progress=not args.no_progress) as executor:
        report = emulate_eval(args.model, data, run_config(args, executor), target=args.target)
    print(report.emulated.format_table())
    print()
    print(report.format_text())
    if args.json:
        atomic_write_text(args.json, json.dumps({**report.emulated.to_dict(), "emulation": report.to_dict()},
                                                indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
