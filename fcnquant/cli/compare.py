"""``fcnquant compare``: per-layer drift and mIoU change between a float model and its quantized version."""
from __future__ import annotations

import argparse
import math
import sys

from fcnquant.errors import FcnquantError

#: fcnquant.compare.gallery.GALLERY_IMAGES (a test checks they agree): importing fcnquant.compare to read it
#: would load scipy for every command's parser.
GALLERY_IMAGES = 6

EXIT_DROP = 3  # --fail-on-drop exceeded
DEFAULT_DRIFT = 16  # = fcnquant.compare.DEFAULT_DRIFT_IMAGES (not imported here: --help stays fast)


def _drift_images(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got '{text}'") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'all'), got {k}")
    return k


def register(sub) -> None:
    """Adds the ``compare`` subcommand to ``sub``."""
    from fcnquant.cli._distributed import add_provider_option, add_ray_options
    from fcnquant.cli._options import add_data_options

    p = sub.add_parser(
        "compare", help="per-layer drift and mIoU change of a quantized (int8 QDQ or fp16) model",
        description="Runs FLOAT and QUANT on the same images and reports, for every quantized activation, cosine "
                    "similarity, SNR, MSE, max abs error and relative L2, accumulated (whole quantized model) and "
                    "isolated (that layer alone, fed float inputs); plus both models' mIoU, per-class IoU changes "
                    "and the share of pixels whose class changed (overall and near object boundaries). "
                    f"Exit status {EXIT_DROP} when --fail-on-drop is exceeded.")
    p.add_argument("float_model", metavar="FLOAT", help="the float ONNX model")
    p.add_argument("quant_model", metavar="QUANT", help="its quantized version (QDQ int8 or fp16 ONNX), made by "
                   "fcnquant or another tool")
    add_data_options(p)
    p.add_argument("--table", metavar="JSON", help="calibration table: adds each layer's clipping range and "
                   "activation histograms of the worst layers to the HTML report")
    p.add_argument("--stats", metavar="NPZ", help="calibration statistics file: histograms for the HTML report "
                   "are drawn from it")
    p.add_argument("--report", metavar="HTML", help="write a self-contained HTML report with plots to HTML")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT")
    p.add_argument("--gallery", type=int, default=GALLERY_IMAGES, metavar="K", help="show the K images with the "
                   "most changed pixels in the HTML report: input, ground truth, both predictions and the changed "
                   "pixels (default %(default)s; 0: no gallery)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="layers listed as top offenders "
                   "(default %(default)s)")
    p.add_argument("--sort", choices=("accumulated", "isolated"), default="accumulated",
                   help="rank the terminal table by accumulated or isolated SNR (default %(default)s)")
    p.add_argument("--no-isolated", action="store_true", help="skip the isolated pass (faster; accumulated "
                   "drift only)")
    p.add_argument("--drift-images", default=str(DEFAULT_DRIFT), metavar="K", type=_drift_images,
                   help="measure per-layer drift on K images spread evenly over the chosen ones, or 'all' "
                        "(default %(default)s; the final metrics always use every image)")
    p.add_argument("--boundary", type=int, default=3, metavar="PX", help="boundary band half-width in pixels for "
                   "the changed-pixel share (default %(default)s)")
    p.add_argument("--fail-on-drop", type=float, metavar="X", help=f"exit with status {EXIT_DROP} when the model "
                   "loses more than X mIoU points, i.e. the mIoU change (quantized - float) is below -X; needs "
                   "labelled data")
    p.add_argument("--emulate", action="store_true", help="also score QUANT as the target's integer arithmetic "
                   "computes it (docs/emulation.md): its mIoU and its disagreement with onnxruntime's simulation")
    p.add_argument("--target", metavar="T", help="with --emulate: the target whose arithmetic is emulated "
                   "(default: the one recorded in QUANT, else npu-pow2)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    add_ray_options(p)
    add_provider_option(p)
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compares, prints the table, writes the requested files; returns 3 when --fail-on-drop is exceeded."""
    from fcnquant.cli._distributed import executor_from_args
    from fcnquant.cli._options import data_config, run_config
    from fcnquant._io import all_or_nothing, check_outputs
    from fcnquant.compare import CompareOptions, compare_models

    if args.top < 0:
        raise FcnquantError(f"--top must be >= 0, got {args.top}")
    if args.gallery < 0:
        raise FcnquantError(f"--gallery must be >= 0, got {args.gallery}")
    if args.boundary < 0:
        raise FcnquantError(f"--boundary must be >= 0, got {args.boundary}")
    if args.fail_on_drop is not None and not math.isfinite(args.fail_on_drop):
        raise FcnquantError(f"--fail-on-drop must be a finite number, got {args.fail_on_drop}")
    check_outputs({"--json": args.json, "--report": args.report},
                  {"FLOAT": args.float_model, "QUANT": args.quant_model, "--table": args.table, "--stats": args.stats,
                   "--ids": getattr(args, "ids", None)})
    if args.target is not None and not args.emulate:
        raise FcnquantError("--target is used with --emulate")
    options = CompareOptions(drift_images=args.drift_images, isolated=not args.no_isolated,
                             boundary_radius=args.boundary,
                             # the gallery's panels are drawn for the JSON and HTML reports only
                             gallery=args.gallery if args.json or args.report else 0, emulate=args.emulate,
                             emulate_target=args.target)
    executor = executor_from_args(args, progress=not args.no_progress)
    data, run = data_config(args), run_config(args, executor)
    with executor:
        report = compare_models(args.float_model, args.quant_model, data, run, options, table=args.table,
                                stats=args.stats)
    print(report.format_table(top=args.top, by=args.sort if not args.no_isolated else "accumulated"))
    with all_or_nothing():  # the JSON and the HTML report both, or neither
        if args.json:
            report.to_json(args.json)
        if args.report:
            report.to_html(args.report, top=args.top)
    for path in (args.json, args.report):
        if path:
            print(f"wrote {path}")
    if args.fail_on_drop is not None:
        if not report.final.labelled:
            raise FcnquantError("--fail-on-drop needs labelled data, but the images have no segmentation masks")
        if not math.isfinite(report.miou_drop):  # NaN compares false: it would pass the gate unmeasured
            raise FcnquantError(f"--fail-on-drop: the mIoU change could not be measured ({report.miou_change})")
        if report.miou_drop > args.fail_on_drop:
            print(f"fcnquant compare: mIoU change {report.miou_change:+.3f} points is below "
                  f"{-args.fail_on_drop:+g} (--fail-on-drop {args.fail_on_drop:g}; float {report.final.miou_float:.3f}, quantized "
                  f"{report.final.miou_quant:.3f})", file=sys.stderr)
            return EXIT_DROP
    return 0
