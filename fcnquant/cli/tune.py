"""``fcnquant tune``: the int8 model that meets an mIoU budget with the fewest layers left in float."""
from __future__ import annotations

import argparse
import math
import sys

from fcnquant.cli._target import TARGET_HELP_SUFFIX, TARGET_METAVAR, print_verdict, resolve_target
from fcnquant.errors import FcnquantError

#: fcnquant.tune's FALLBACKS and RANKINGS (a test checks they agree), here so that building the parser does not
#: import fcnquant.tune.
FALLBACKS = ("float", "fp16", "int16")
RANKINGS = ("sensitivity", "isolated")
OBJECTIVES = ("labelled", "agreement")

EXIT_OVER_BUDGET = 3


def register(sub) -> None:
    """Adds the ``tune`` subcommand to ``sub``."""
    from fcnquant.cli._distributed import add_provider_option, add_ray_options
    from fcnquant.cli._options import DATA_HELP
    from fcnquant.cli.calibrate import METHOD_CHOICES, TARGET_CHOICES

    p = sub.add_parser(
        "tune", help="meet an mIoU budget with the fewest layers left in float",
        description="Calibrates MODEL once, quantizes everything and measures the mIoU drop on tuning images; if it "
                    "exceeds --max-drop, ranks the quantized layers, finds the shortest prefix of the ranking whose "
                    "layers kept in float meet the budget (galloping + bisection) and returns every layer of it to "
                    "int8 that the budget allows. Calibration, tuning and reporting images are disjoint; the "
                    "verdict (compare report) is measured on the reporting split. Exit status "
                    f"{EXIT_OVER_BUDGET} when the budget cannot be met (the best model is then written as "
                    "OUT_STEM.over-budget.onnx).")
    p.add_argument("model", metavar="MODEL", help="the float ONNX model")
    p.add_argument("--max-drop", type=float, required=True, metavar="X",
                   help="largest acceptable mIoU drop on the tuning images, in points (float - int8)")
    p.add_argument("--out", required=True, metavar="F", help="the tuned int8 model (written only within budget)")
    p.add_argument("--json", metavar="F", help="write the result (evaluations, float layers, drops, images) as JSON")
    p.add_argument("--report", metavar="HTML", help="write the compare report on the reporting images, with the "
                   "tuning summary, as HTML")
    q = p.add_argument_group("quantization")
    q.add_argument("--target", default="ort-cpu", metavar=TARGET_METAVAR, help="deployment target: "
                   f"{', '.join(TARGET_CHOICES)} (default %(default)s){TARGET_HELP_SUFFIX}")
    q.add_argument("--method", default="kl", choices=METHOD_CHOICES, help="range method (default %(default)s)")
    q.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per channel)")
    q.add_argument("--recover", action="store_true", help="apply fcnquant.recover (equalization, bias correction, "
                   "AdaRound) to every candidate model")
    q.add_argument("--bias-correction", choices=("fast", "sequential"), default=None, metavar="fast|sequential",
                   help="with --recover: the bias correction's form, fast (one pass over the calibration images, "
                        "the default) or sequential (layer by layer, the reference)")
    q.add_argument("--fallback", choices=FALLBACKS, help="what the chosen layers run in: float32, fp16 islands "
                   "with Casts around them, or int16 activations (int8 weights; no float op), as the target allows "
                   "(default: float where allowed, else the target's first fallback: int16 on npu-pow2)")
    g = p.add_argument_group("images")
    g.add_argument("--data", metavar="DIR", help=DATA_HELP)
    g.add_argument("--calib-split", default="train", help="split the calibration images come from (default "
                   "%(default)s)")
    g.add_argument("--num-calib", type=int, default=50, metavar="N", help="calibration images (default %(default)s)")
    g.add_argument("--tune-split", metavar="S", help="split the tuning images come from (default: the calibration "
                   "split minus the calibration images)")
    g.add_argument("--num-tune", type=int, default=200, metavar="N", help="tuning images (default %(default)s)")
    g.add_argument("--report-split", default="val", help="split of the reporting images (default %(default)s)")
    g.add_argument("--report-data", metavar="DIR", help="VOC root of the reporting images (default: --data)")
    g.add_argument("--num-report", type=int, metavar="N", help="reporting images (default: the whole split)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image selections (default %(default)s)")
    s = p.add_argument_group("search")
    s.add_argument("--rank", default="sensitivity", choices=RANKINGS, help="layer ranking: sensitivity (each "
                   "layer alone in float, changed pixels on the ranking images) or isolated (one compare pass) "
                   "(default %(default)s)")
    s.add_argument("--rank-images", type=int, default=16, metavar="N", help="tuning images the ranking runs on "
                   "(default %(default)s)")
    s.add_argument("--max-evaluations", type=int, metavar="N", help="stop after N evaluations of the tuning set "
                   "(never more than ceil(log2 L) + 3 for L layers)")
    s.add_argument("--objective", choices=OBJECTIVES, help="what the search holds to --max-drop: the labelled "
                   "mIoU drop, or agreement: the percentage of pixels whose class differs from the float model's, "
                   "above that of every layer in the fallback (far less noise; the labelled drop is verified at "
                   "the end) (default: agreement with --fallback int16, else labelled)")
    s.add_argument("--confidence", type=float, metavar="P", help="hold the one-sided P upper bound of each "
                   "candidate's drop (paired bootstrap over the tuning images, e.g. 0.9) to --max-drop instead of "
                   "the point estimate: more layers in float, a budget met with confidence P")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    add_ray_options(p)
    add_provider_option(p)
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Tunes, prints the evaluations and verdict; returns 3 when the budget cannot be met."""
    from fcnquant._io import check_outputs
    from fcnquant.cli._distributed import executor_from_args
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.tune import ImageChoice, TuneOptions, tune

    check_outputs({"--out": args.out, "--json": args.json, "--report": args.report}, {"MODEL": args.model})
    if not math.isfinite(args.max_drop):
        raise FcnquantError(f"--max-drop must be a finite number, got {args.max_drop}")
    images = ImageChoice(calib_split=args.calib_split, num_calib=args.num_calib, tune_split=args.tune_split,
                         num_tune=args.num_tune, report_split=args.report_split, num_report=args.num_report,
                         report_root=args.report_data)
    options = TuneOptions(max_drop=args.max_drop, fallback=args.fallback, objective=args.objective,
                          confidence=args.confidence,
                          rank=args.rank, rank_images=args.rank_images, max_evaluations=args.max_evaluations,
                          images=images)
    quant = QuantConfig(method=args.method, target=resolve_target(args.target), per_channel=not args.per_tensor)
    recover = args.recover
    if args.bias_correction is not None:
        if not args.recover:
            raise FcnquantError("--bias-correction chooses the form of --recover's bias correction: give --recover")
        from fcnquant.recover import resolve_plan

        recover = resolve_plan(quant.target, not args.per_tensor, recover=True, equalize=False, scale_search=False,
                               bias_correction_form=args.bias_correction)
    with executor_from_args(args, progress=not args.no_progress) as executor:
        result = tune(args.model, args.out, options, DataConfig(args.data, seed=args.seed),
                      RunConfig(executor=executor), quant, recover=recover, json_path=args.json,
                      report=args.report)
    print(result.format_table())
    print(f"wrote {result.out}")
    print_verdict(result.out, quant.target)
    for path in (args.report, args.json):
        if path:
            print(f"wrote {path}")
    if result.over_budget:
        print(f"fcnquant tune: the budget of {args.max_drop:g} mIoU points cannot be met: the best model found "
              f"drops {result.tune_drop:.3f} on the tuning images with {len(result.float_layers)} of "
              f"{result.layers} layers in {result.fallback}; written as {result.out} (over budget), not as {args.out}",
              file=sys.stderr)
        return EXIT_OVER_BUDGET
    return 0
