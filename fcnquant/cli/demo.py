"""``fcnquant demo``: the whole job on the built-in demo (or your model and data), end to end."""
from __future__ import annotations

import argparse

from fcnquant.cli._target import TARGET_HELP_SUFFIX, TARGET_METAVAR, resolve_target


def register(sub) -> None:
    from fcnquant.cli._distributed import add_provider_option

    p = sub.add_parser(
        "demo", help="calibrate, emit int8 + fp16, compare both with fp32, and report (built-in demo by default)",
        description="Runs the whole pipeline: calibrate MODEL (default: the shipped demo fcn8s) on the calibration "
                    "split with --method, emit an int8 QDQ model for --target and an fp16 model, compare both with "
                    "the float model on the held-out split (per-layer drift and mIoU), print a summary table and "
                    "write HTML reports. Without --data it uses the built-in synthetic VOC.")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="float ONNX model, or a shipped demo model name (fcn8s, fcn16s, fcn32s, fcn_r50_d8); "
                        "default fcn8s")
    p.add_argument("--data", metavar="DIR", help="VOC root (default: the built-in synthetic VOC for a demo model; "
                   "for your own model $FCNQUANT_DATA, ./data/VOCdevkit or ./VOCdevkit when present)")
    p.add_argument("--ann-dir", metavar="NAME", help="annotation folder under the VOC root (default: "
                   "SegmentationClass/, then SegmentationClassAug/)")
    p.add_argument("--calib-split", default="train", help="split to calibrate on (default train)")
    p.add_argument("--eval-split", default="val", help="held-out split to compare on (default val)")
    p.add_argument("--num-images", type=int, default=50, metavar="N",
                   help="calibration images (default 50: vendor toolchains calibrate on a small subset)")
    p.add_argument("--eval-images", type=int, default=None, metavar="N", help="compare on the first N images only")
    p.add_argument("--method", default="kl", choices=["kl", "minmax", "percentile", "mse"],
                   help="range method (default kl)")
    p.add_argument("--target", default="ort-cpu", metavar=TARGET_METAVAR,
                   help="deployment target of the int8 model: ort-cpu, tensorrt, npu-pow2 (default ort-cpu)"
                        + TARGET_HELP_SUFFIX)
    p.add_argument("--out", default="fcnquant-demo-out", metavar="DIR",
                   help="output folder (default ./fcnquant-demo-out)")
    p.add_argument("--gallery", type=int, default=None, metavar="K", help="images in each HTML report's gallery of "
                   "the most changed images (default 6; 0: none)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (strict accelerators)")
    p.add_argument("--recover", action="store_true", help="run the accuracy-recovery passes that help on the target "
                   "(see `fcnquant calibrate --help`)")
    add_provider_option(p)
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnquant.data import DataConfig
    from fcnquant.demo_models import DEMO_MODELS, demo_model_path
    from fcnquant.errors import ModelError
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.workflows.demo import run_pipeline

    run = RunConfig(progress=not args.no_progress, provider=args.provider)  # checks the provider before any work
    model = args.model
    if model is None or (model in DEMO_MODELS and not Path(model).exists()):
        model = demo_model_path(model or "fcn8s")
    elif not Path(model).is_file():  # before the synthetic set is built and the output folder made
        raise ModelError(f"model file not found: {model} (nor a shipped demo model: {', '.join(DEMO_MODELS)})")
    data = DataConfig(args.data, args.calib_split, args.ann_dir, num_images=args.num_images)
    quant = QuantConfig(method=args.method, target=resolve_target(args.target), per_channel=not args.per_tensor)
    result = run_pipeline(model, args.out, data, quant, run,
                          eval_split=args.eval_split, eval_images=args.eval_images, gallery=args.gallery,
                          recover=args.recover)
    print()
    print(f"fcnquant demo: {Path(model).name}, {args.method} on {result.calibration_images} calibration images, "
          f"target {args.target}, compared on '{args.eval_split}' ({result.int8_report.images} images)")
    print(result.format_summary())
    print()
    print("Model card table:")
    print(result.format_card())
    print()
    print("Worst int8 layers (accumulated SNR):")
    print(result.int8_report.format_table(top=5))
    print()
    print(f"Outputs are in {result.out_dir}/: int8 model {result.int8_model.name}, fp16 model "
          f"{result.fp16_model.name}, table {result.table.name}, statistics {result.stats.name}, reports "
          f"{result.int8_html.name} and "
          f"{result.fp16_html.name}, summary {result.json.name}")
    return 0
