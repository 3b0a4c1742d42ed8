"""``fcnquant table``: the model-card table (Markdown) from compare reports and demo summaries."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    """Adds the ``table`` subcommand."""
    p = sub.add_parser(
        "table", help="print the model-card table (Markdown) from compare/demo JSON files",
        description="Prints one Markdown row per model and precision with Code Source, Backbone, FLOPs(G), "
                    "Params(M), MIoU and Shapes, from compare reports (`fcnquant compare --json`) and demo "
                    "summaries (<stem>.summary.json). FLOPs and parameters are counted from the model files the "
                    "JSON names (FLOPs = 2 x MACs; see docs/info.md).")
    p.add_argument("files", nargs="+", metavar="JSON", help="compare reports or demo summaries")
    p.add_argument("--backbone", help="Backbone column (default: from the model metadata, else '-')")
    p.add_argument("--source", help="Code Source column (default: from the model metadata, else '-')")
    p.add_argument("--size", type=int, metavar="PX", help="count FLOPs at a square input of this side "
                   "(default: each model's own input size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints the table; returns the exit status."""
    from fcnquant.compare import card_table

    print(card_table(args.files, backbone=args.backbone, source=args.source, size=args.size))
    return 0
