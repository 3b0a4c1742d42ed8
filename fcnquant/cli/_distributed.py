"""The ``--ray [ADDRESS]`` and ``--shards N`` options shared by calibrate, eval, compare and tune."""
from __future__ import annotations

import argparse

from fcnquant.errors import FcnquantError


def add_ray_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Adds --ray [ADDRESS] and --shards N."""
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the images as shards on Ray (pip install \"fcnquant[ray]\"): --ray alone starts a "
                        "local Ray instance for this run; --ray auto joins the cluster `ray start` runs on this "
                        "machine; --ray HOST:PORT (or ray://HOST:10001) joins that cluster. The data must be on "
                        "storage every node reads at the same path; results equal a single-process run exactly")
    p.add_argument("--shards", type=int, metavar="N",
                   help="number of shards with --ray (default: the cluster's CPU count)")


def ray_options(args: argparse.Namespace) -> dict:
    """Returns ``{"ray_address": ..., "shards": ...}`` for the library call (empty without --ray)."""
    if args.shards is not None and args.ray is None:
        raise FcnquantError("--shards sets the number of shards of a --ray run: add --ray")
    if args.shards is not None and args.shards < 1:
        raise FcnquantError(f"--shards must be at least 1, got {args.shards}")
    return {} if args.ray is None else {"ray_address": args.ray, "shards": args.shards}
