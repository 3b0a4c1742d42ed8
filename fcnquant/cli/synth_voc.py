"""``fcnquant synth-voc``: write a synthetic PASCAL VOC dataset."""
from __future__ import annotations

import argparse

from fcnquant.data.discover import BUILTIN_PARAMS


def register(sub) -> None:
    """Adds the ``synth-voc`` subcommand to ``sub``."""
    p = sub.add_parser(
        "synth-voc", help="write a synthetic VOC2012-layout dataset",
        description="Writes OUT/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation} with random scenes "
                    "of the 20 VOC classes; OUT is then usable as --data (a VOCdevkit-style root).",
    )
    p.add_argument("out", metavar="OUT", help="output folder (VOCdevkit root); OUT/VOC2012 must not exist")
    p.add_argument("--train", type=int, default=BUILTIN_PARAMS["train"],
                   help="number of train images (default %(default)s)")
    p.add_argument("--val", type=int, default=BUILTIN_PARAMS["val"], help="number of val images (default %(default)s)")
    p.add_argument("--size", type=int, default=BUILTIN_PARAMS["size"],
                   help="image side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=BUILTIN_PARAMS["seed"], help="random seed (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Writes the dataset and prints where it went."""
    from fcnquant.data.synth import write_synthetic_voc

    root = write_synthetic_voc(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                               progress=not args.no_progress)
    print(f"wrote {args.train} train + {args.val} val images ({args.size}x{args.size}) to {root / 'VOC2012'}")
    return 0
