"""``fcnquant eval``: mIoU of an ONNX segmentation model on a VOC-style split."""
from __future__ import annotations

import argparse

from fcnquant.errors import FcnquantError


def parse_size(text: str) -> tuple[int, ...]:
    """Returns the integers of "S", "HxW" or "H,W"."""
    try:
        vals = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got '{text}'") from None
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW with positive integers, got '{text}'")
    return vals


def parse_triple(text: str) -> tuple[float, float, float]:
    """Returns three floats from "a,b,c"."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got '{text}'") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got '{text}'")
    return vals  # type: ignore[return-value]


DATA_HELP = ("VOC root (VOCdevkit, VOCdevkit/VOC2012 or a folder with JPEGImages/ SegmentationClass/ ImageSets/). "
             "Default: the built-in synthetic VOC for a shipped demo model; otherwise $FCNQUANT_DATA, then "
             "./data/VOCdevkit, then ./VOCdevkit, else the synthetic VOC with a warning")
ANN_DIR_HELP = ("annotation folder under the VOC root (default: SegmentationClass/, then SegmentationClassAug/ of "
                "mmsegmentation's voc12aug for ids it lacks); palette or plain 8-bit class-index PNGs")


def add_data_options(p: argparse.ArgumentParser, split: str = "val") -> None:
    """Adds the shared --data/--split/--preset/--size/--mean/--std/--num-images/--batch-size options."""
    from fcnquant.data import PRESETS

    p.add_argument("--data", metavar="DIR", help=DATA_HELP)
    p.add_argument("--split", default=split, help="split list ImageSets/Segmentation/SPLIT.txt (default %(default)s)")
    p.add_argument("--ann-dir", metavar="NAME", help=ANN_DIR_HELP)
    p.add_argument("--preset", choices=sorted(PRESETS), help="preprocessing preset (default: the model's "
                   "fcnquant.preset metadata, else awesome); the size follows a fixed model input")
    p.add_argument("--size", type=parse_size, help="input size S or HxW (keep-ratio: SHORT or SHORTxLONG)")
    p.add_argument("--mean", type=parse_triple, help="per-channel RGB mean a,b,c on the preset's pixel scale")
    p.add_argument("--std", type=parse_triple, help="per-channel RGB std a,b,c on the preset's pixel scale")
    p.add_argument("--num-images", type=int, metavar="N", help="use only the first N images of the split")
    p.add_argument("--batch-size", type=int, default=1, metavar="B", help="images per inference (default %(default)s)")


def register(sub) -> None:
    """Adds the ``eval`` subcommand to ``sub``."""
    p = sub.add_parser("eval", help="evaluate mIoU of an ONNX model on a VOC-style split",
                       description="Runs MODEL on a labelled split and prints per-class IoU, mIoU (mmseg and "
                                   "awesome conventions), pixel accuracy and images/s.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    add_data_options(p)
    p.add_argument("--ids", metavar="FILE", help="evaluate only the ids listed in FILE (one per line)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates and prints the table."""
    from fcnquant.data import load_ids
    from fcnquant.evaluate import evaluate

    if args.batch_size < 1:
        raise FcnquantError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate(
        args.model, data=args.data, split=args.split, preset=args.preset, num_images=args.num_images,
        batch_size=args.batch_size, progress=not args.no_progress, ids=load_ids(args.ids) if args.ids else None,
        size=args.size, mean=args.mean, std=args.std, threads=args.threads, ann_dir=args.ann_dir,
    )
    print(result.format_table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0
