"""Options shared by the subcommands that read images, and the configs built from them."""
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


def data_config(args: argparse.Namespace, **changes):
    """Returns the DataConfig of the parsed data options (``--ids FILE`` read here); ``changes`` override."""
    from fcnquant.data import DataConfig, load_ids

    ids = getattr(args, "ids", None)
    values = dict(root=getattr(args, "data", None), split=getattr(args, "split", None),
                  ann_dir=getattr(args, "ann_dir", None), preset=getattr(args, "preset", None),
                  size=getattr(args, "size", None), mean=getattr(args, "mean", None), std=getattr(args, "std", None),
                  ids=load_ids(ids) if isinstance(ids, str) else ids, num_images=getattr(args, "num_images", None))
    values.update(changes)
    return DataConfig(**values)


def run_config(args: argparse.Namespace, executor):
    """Returns the RunConfig of ``executor`` and ``--batch-size``."""
    from fcnquant.execute import RunConfig

    batch = getattr(args, "batch_size", 1)
    if batch < 1:
        raise FcnquantError(f"--batch-size must be at least 1, got {batch}")
    return RunConfig(executor=executor, batch_size=batch)
