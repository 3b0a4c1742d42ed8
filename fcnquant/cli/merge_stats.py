"""``fcnquant merge-stats``: combine statistics files from sharded calibration runs, exactly."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    """Adds the ``merge-stats`` subcommand to ``sub``."""
    p = sub.add_parser(
        "merge-stats", help="merge statistics files of calibration shards",
        description="Combines statistics (.npz) collected by `fcnquant calibrate --shard i/n --save-stats F` on "
                    "disjoint image sets. Histograms add and min/max combine, so the result equals one run over "
                    "all the images bit for bit. Files must come from the same model, preset and histogram "
                    "resolution, with no image in two files.")
    p.add_argument("inputs", metavar="STATS", nargs="+", help="statistics files to merge")
    p.add_argument("--out", required=True, metavar="F", help="merged statistics file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant merge-stats``; returns the exit status."""
    from fcnquant._io import check_outputs
    from fcnquant.calibrate.stats import CalibrationStats, merge_stats

    check_outputs({"--out": args.out}, {f"STATS {i + 1}": path for i, path in enumerate(args.inputs)})
    parts = [CalibrationStats.load(path) for path in args.inputs]
    merged = merge_stats(parts)
    merged.save(args.out)
    state = "complete" if merged.shard is None else f"partial: shards {merged.shard}"
    print(f"merged {len(parts)} file(s): {len(merged.image_ids)} images, {len(merged.tensors)} tensors ({state})")
    print(f"  wrote {args.out}")
    return 0
