"""``fcnquant export``: write a zoo FCN (checkpoint or seeded random weights) as an ONNX model. Needs torch."""
from __future__ import annotations

import argparse

from fcnquant.errors import FcnquantError

# Kept in step with fcnquant.models.MODEL_NAMES (a test checks); listed here so `--help` works without torch.
MODEL_CHOICES = ("fcn32s", "fcn16s", "fcn8s", "fcn_r50_d8", "fcn_r101_d8", "fcn_resnet50", "fcn_resnet101")
TORCH_HINT = (
    "fcnquant export needs PyTorch: pip install 'fcnquant[torch]' "
    "(on CPU-only machines first pip install torch==2.13.0, the CPU build, so pip does not pull a CUDA wheel)"
)


def register(sub) -> None:
    """Adds the ``export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="export a zoo FCN model to ONNX (needs torch)",
        description="Export fcn32s/fcn16s/fcn8s (VGG16, awesome-semantic-segmentation-pytorch layout) or "
        "fcn_r50_d8/fcn_r101_d8 (mmsegmentation layout) or fcn_resnet50/fcn_resnet101 (torchvision layout; "
        "no torchvision needed) to ONNX opset 17: input 'input' (N,3,H,W) float32, "
        "output 'output' (N,classes,H,W) logits, BatchNorm folded. Without --checkpoint the weights are seeded "
        "random: the graph is usable for benchmarks and pipelines but its predictions are meaningless.",
    )
    p.add_argument("model", choices=MODEL_CHOICES, help="zoo model name")
    p.add_argument("--out", required=True, help="where to write the ONNX model, e.g. fcn8s.onnx")
    p.add_argument("--checkpoint", help="PyTorch weights (.pth): plain state dict, mmseg {'state_dict', 'meta'}, "
                   "awesome, torchvision (aux_classifier.* dropped), with or without 'module.' prefixes; keys are matched "
                   "strictly")
    p.add_argument("--size", type=int, nargs="+", metavar="PX",
                   help="input side, or HEIGHT WIDTH (default: 320 for the VGG FCNs, 512 for the mmseg ResNets, 520 for "
                   "torchvision's)")
    p.add_argument("--num-classes", type=int, default=21, help="number of output classes (default: 21, VOC)")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel width multiplier, e.g. 0.125 for a tiny model of the same topology (default: 1.0)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic ('N')")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint is given")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant export``; returns the exit status."""
    if args.size is not None and len(args.size) not in (1, 2):
        raise FcnquantError(f"--size takes one or two values (HEIGHT WIDTH), got {len(args.size)}")
    try:
        from fcnquant.models import export_onnx
    except ModuleNotFoundError as exc:
        if exc.name == "torch" or (exc.name or "").startswith("torch."):
            raise FcnquantError(TORCH_HINT) from exc
        raise
    from fcnquant._io import check_outputs

    check_outputs({"--out": args.out}, {"--checkpoint": args.checkpoint})
    size = None if args.size is None else (args.size[0] if len(args.size) == 1 else tuple(args.size))
    path = export_onnx(
        args.model, args.out, checkpoint=args.checkpoint, size=size, num_classes=args.num_classes,
        width=args.width, dynamic_batch=args.dynamic_batch, seed=args.seed,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
