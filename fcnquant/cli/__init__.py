"""The ``fcnquant`` command line: a thin layer that parses arguments and calls one library function.

Each subcommand lives in its own module under ``fcnquant.cli`` exposing ``register(subparsers)``;
the module adds its parser and sets ``func`` to a callable ``(args) -> int``.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from fcnquant import __version__
from fcnquant.errors import FcnquantError

# Order here is the order in `fcnquant --help`.
SUBCOMMANDS = [
    "demo",
    "export",
    "synth-voc",
    "eval",
    "equalize",
    "calibrate",
    "merge-stats",
    "quantize",
    "fp16",
    "check",
    "compare",
    "tune",
    "info",
    "table",
]


def build_parser() -> argparse.ArgumentParser:
    """Returns the top-level argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fcnquant",
        description="Post-training quantization, calibration and comparison for FCN segmentation models in ONNX.",
    )
    parser.add_argument("--version", action="version", version=f"fcnquant {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"fcnquant.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except FcnquantError as exc:
        print(f"fcnquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a full disk is the user's to fix, whichever writer hit it: one line, like any bad input
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"fcnquant {args.command}: error: no space left on the device ({exc.filename or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
