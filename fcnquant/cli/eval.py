"""``fcnquant eval``: mIoU of an ONNX segmentation model on a VOC-style split."""
from __future__ import annotations

import argparse

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
    data = data_config(args)
    with executor_from_args(args, progress=not args.no_progress) as executor:
        result = evaluate(args.model, data, run_config(args, executor))
    print(result.format_table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0
