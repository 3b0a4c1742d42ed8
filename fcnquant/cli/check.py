"""``fcnquant check``: every op of a QDQ model that would not run as a target's integer arithmetic."""
from __future__ import annotations

import argparse

from fcnquant.cli._target import TARGET_HELP_SUFFIX, TARGET_METAVAR


def register(sub) -> None:
    """Adds the ``check`` subcommand."""
    p = sub.add_parser(
        "check", help="list the ops of a QDQ model that would not run as the target's integer arithmetic",
        description="Reads the graph of MODEL (no inference) and lists, one line each (node, op, what, why), every "
                    "op that would not run as --target's integer arithmetic: float compute between "
                    "DequantizeLinear and QuantizeLinear (the float logits aside), a scale that is not a power of "
                    "two where the target needs one, per-channel weights where it takes one scale per tensor, "
                    "Add/Concat input scales it cannot align, int16 where it does not allow it. Exit status 0 "
                    "when the model is legal, 1 when it is not, 2 for bad input.")
    p.add_argument("model", metavar="MODEL", help="the QDQ ONNX model")
    p.add_argument("--target", required=True, metavar=TARGET_METAVAR,
                   help="the target: ort-cpu, tensorrt, npu-pow2" + TARGET_HELP_SUFFIX)
    p.add_argument("--json", metavar="F", help="also write the findings as JSON to F")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant check``; returns 0 (legal), 1 (not legal) or raises for bad input."""
    from fcnquant._io import check_outputs
    from fcnquant.check import EXIT_NOT_LEGAL, check_model, write_json
    from fcnquant.cli._target import resolve_target

    check_outputs({"--json": args.json}, {"MODEL": args.model, "--target": args.target})
    report = check_model(args.model, resolve_target(args.target))
    print(report.format_text())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0 if report.legal else EXIT_NOT_LEGAL
