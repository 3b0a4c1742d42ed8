"""``fcnquant calibrate``: activation statistics and a calibration table for an ONNX model."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fcnquant.cli._distributed import add_provider_option, add_ray_options
from fcnquant.cli._emission import add_emission_options, add_recovery_options, bias_correction_switch, quant_config
from fcnquant.cli._target import TARGET_HELP_SUFFIX, TARGET_METAVAR
from fcnquant.data import load_ids
from fcnquant.errors import FcnquantError

METHOD_CHOICES = ("kl", "minmax", "percentile", "mse")
TARGET_CHOICES = ("ort-cpu", "tensorrt", "npu-pow2")
#: = fcnquant.workflows.int8.DEFAULT_CALIBRATION_IMAGES (a test checks they agree; not imported: --help stays fast)
DEFAULT_IMAGES = 100


def register(sub) -> None:
    """Adds the ``calibrate`` subcommand to ``sub``."""
    from fcnquant.cli._options import ANN_DIR_HELP, DATA_HELP, parse_size, parse_triple
    from fcnquant.data import PRESETS

    p = sub.add_parser(
        "calibrate", help="collect activation statistics and write a calibration table",
        description="Runs MODEL once per calibration image, streaming the activations an int8 model needs into "
                    "exact min/max and histogram observers, then computes each tensor's range, scale and zero "
                    "point with --method for --target. By default it writes, beside MODEL (or in --out-dir), the "
                    "int8 model for --target (MODEL_STEM.int8.onnx), the table (MODEL_STEM.calib.json) and the "
                    "statistics (MODEL_STEM.stats.npz), and prints the `fcnquant compare` command that checks the "
                    "int8 model; --out, --out-table and --save-stats choose single paths, and given without "
                    "--out-dir they write only what they name (the table in the current folder unless "
                    "--out-table). --from-stats recomputes a table from saved statistics "
                    "without inference; --shard i/n collects one slice of the images (merge with "
                    "`fcnquant merge-stats`).")
    p.add_argument("model", metavar="MODEL", nargs="?", help="float ONNX model (optional with --from-stats: then "
                   "only used to check the statistics belong to it)")
    g = p.add_argument_group("images")
    g.add_argument("--data", metavar="DIR", help=DATA_HELP.replace("VOC root", "VOC root or a folder of images", 1))
    g.add_argument("--split", default="train", help="split list ImageSets/Segmentation/SPLIT.txt (default %(default)s)")
    g.add_argument("--ann-dir", metavar="NAME", help=ANN_DIR_HELP)
    g.add_argument("--num-images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help="calibration images drawn from the split (default %(default)s; all if fewer): every "
                   "segmentation image gives each activation thousands of values, so 100 fill the histograms in a "
                   "fifth of the time of the ~500 that vendor toolchains suggest for classifiers; give 500 for a "
                   "final model")
    g.add_argument("--seed", type=int, default=0, help="seed of the image selection (default %(default)s)")
    g.add_argument("--balanced", action="store_true", help="choose images covering every class first (needs masks)")
    g.add_argument("--ids-file", metavar="F", help="use exactly the image ids listed in F (one per line)")
    g.add_argument("--save-ids", metavar="F", help="write the selected image ids to F")
    g.add_argument("--preset", choices=sorted(PRESETS), help="preprocessing preset (default: the model's "
                   "fcnquant.preset metadata, else awesome); the size follows a fixed model input")
    g.add_argument("--size", type=parse_size, help="input size S or HxW for models with a dynamic input")
    g.add_argument("--mean", type=parse_triple, help="per-channel RGB mean a,b,c on the preset's pixel scale")
    g.add_argument("--std", type=parse_triple, help="per-channel RGB std a,b,c on the preset's pixel scale")
    g.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="images per inference when the model's batch dimension is dynamic (default %(default)s)")
    g.add_argument("--shard", metavar="I/N", help="collect only slice I of N (1-based) of the image list; "
                   "needs --save-stats")
    add_ray_options(g)
    add_provider_option(g)
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="leave NaN/Inf activations out of the statistics (counted and reported) instead of failing")
    m = p.add_argument_group("method")
    m.add_argument("--method", default="kl", choices=METHOD_CHOICES, help="range method (default %(default)s)")
    m.add_argument("--percentile", type=float, metavar="P",
                   help="percentile of |x| for --method percentile (default 99.99)")
    m.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="other method parameter, e.g. num_bins=2048 or asymmetric=true (repeatable)")
    m.add_argument("--target", default="ort-cpu", metavar=TARGET_METAVAR,
                   help="ort-cpu: uint8 asymmetric; tensorrt: int8 symmetric; npu-pow2: int8 symmetric, "
                        f"power-of-two scales (default %(default)s){TARGET_HELP_SUFFIX}")
    o = p.add_argument_group("outputs")
    o.add_argument("--out-dir", metavar="DIR", help="write the default outputs (MODEL_STEM.int8.onnx, "
                   "MODEL_STEM.calib.json, MODEL_STEM.stats.npz) to DIR, created if missing (default: MODEL's folder)")
    o.add_argument("--table-only", action="store_true", help="write only the table (MODEL_STEM.calib.json in the "
                   "current folder, or --out-table), no int8 model and no statistics")
    o.add_argument("--out-table", metavar="F", help="calibration table JSON (default: MODEL_STEM.calib.json; not "
                   "written for a --shard run unless given)")
    o.add_argument("--save-stats", metavar="F", help="write the raw statistics (.npz) to F (needed by a --shard run)")
    o.add_argument("--from-stats", metavar="F", help="compute the table from statistics saved with --save-stats "
                   "(or merged with merge-stats) instead of running the model")
    o.add_argument("--trt-cache", metavar="F", help="also write a TensorRT calibration cache to F")
    o.add_argument("--out", metavar="F", help="emit the int8 QDQ model for --target to F (as `fcnquant "
                   "quantize MODEL --table ... --out F` would, with the emission options below; default: "
                   "MODEL_STEM.int8.onnx)")
    o.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_emission_options(p.add_argument_group("emission (with --out)"))
    add_recovery_options(p.add_argument_group("accuracy recovery (with --out)"))
    p.set_defaults(func=run)


def method_params(args: argparse.Namespace) -> dict[str, str | float]:
    """Returns the method parameters given by --percentile and --param KEY=VALUE."""
    params: dict[str, str | float] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FcnquantError(f"--param expects KEY=VALUE, got '{item}'")
        params[key.strip()] = value.strip()
    if args.percentile is not None:
        if args.method != "percentile":
            raise FcnquantError("--percentile only applies to --method percentile")
        params["percentile"] = args.percentile
    return params


def run(args: argparse.Namespace) -> int:
    """Runs ``fcnquant calibrate``; returns the exit status."""
    from fcnquant._io import check_outputs
    from fcnquant.calibrate.collect import CollectOptions
    from fcnquant.calibrate.stats import load_stats
    from fcnquant.cli._distributed import executor_from_args
    from fcnquant.cli._options import data_config, run_config
    from fcnquant.recover.plan import resolve_plan
    from fcnquant.workflows.int8 import calibrate

    params = method_params(args)
    if args.model is None and args.from_stats is None:
        raise FcnquantError("give a MODEL (or --from-stats F)")
    outputs = _outputs(args)
    if args.from_stats and (args.data or args.ann_dir or args.shard or args.save_ids or args.ids_file
                            or args.skip_nonfinite):
        raise FcnquantError("--from-stats computes from saved statistics; --data, --ann-dir, --shard, --ids-file, "
                            "--save-ids and --skip-nonfinite apply to collection only")
    if outputs.model and (args.shard or not args.model):
        raise FcnquantError("--out emits the int8 model: it needs MODEL and the full statistics (no --shard)")
    recovery = args.recover or args.equalize or args.bias_correction or args.adaround or args.scale_search
    if recovery and not outputs.model:
        raise FcnquantError("--recover, --equalize, --bias-correction and --adaround make the int8 model: give --out")
    if recovery and args.from_stats:
        raise FcnquantError("recovery passes need the calibration images: drop --from-stats")
    if args.ray is not None and (args.shard or args.from_stats):
        raise FcnquantError("--ray runs every shard of the collection on the cluster: it does not combine with "
                            "--shard or --from-stats")
    if args.shard and not args.save_stats:
        raise FcnquantError("a --shard run collects part of the statistics: give --save-stats F to keep them")
    if args.num_images is not None and args.num_images < 1:
        raise FcnquantError(f"--num-images must be at least 1, got {args.num_images}")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    quant = quant_config(args, args.model, params=params)
    bias_correction, form = bias_correction_switch(args)
    plan = resolve_plan(quant.target, not args.per_tensor, args.recover, equalize=args.equalize,
                        bias_correction=bias_correction, adaround=args.adaround,
                        pow2_rounding=args.pow2_rounding, scale_search=args.scale_search,
                        bias_correction_error=args.bias_correction_error, emits=outputs.model is not None,
                        bias_correction_form=form)
    check_outputs({"--out": outputs.model, "--out-table": outputs.table, "--save-stats": outputs.stats,
                   "--save-ids": outputs.ids, "--trt-cache": outputs.trt_cache},
                  {"MODEL": args.model, "--from-stats": args.from_stats, "--ids-file": args.ids_file})
    data = data_config(args, ids=load_ids(args.ids_file) if args.ids_file else None, seed=args.seed,
                       balanced=args.balanced)
    stats = load_stats(args.from_stats, args.model) if args.from_stats else None
    t0 = time.perf_counter()
    with executor_from_args(args, progress=not args.no_progress) as executor:
        flow = calibrate(args.model, data, quant, run_config(args, executor), plan, outputs=outputs, stats=stats,
                         shard=args.shard, collect=CollectOptions(skip_nonfinite=args.skip_nonfinite),
                         recover=_recover_options(args))
    elapsed = time.perf_counter() - t0
    _print_summary(args, flow, elapsed)
    model = dict(flow.written).get("int8 model")
    if model is not None:
        from fcnquant.cli._target import print_verdict

        print_verdict(model, quant.target)
    _print_next(args, flow)
    return 0


def _defaults_apply(args: argparse.Namespace) -> bool:
    """Whether the default outputs (int8 model, table, statistics) are written: not with --table-only, a --shard
    run or --from-stats without MODEL; given --out/--out-table/--save-stats without --out-dir name the only
    outputs, as they always did."""
    if args.table_only or args.shard or not args.model:
        return False
    return bool(args.out_dir) or not (args.out or args.out_table or args.save_stats)


def _outputs(args: argparse.Namespace):
    """Returns the Outputs of the parsed flags: the defaults beside MODEL (or in --out-dir) where they apply,
    each replaced by its explicit flag; FcnquantError for flags that contradict each other."""
    from fcnquant.workflows.int8 import Outputs

    if args.table_only and (args.out or args.out_dir):
        raise FcnquantError("--table-only writes the table alone: it does not combine with --out or --out-dir")
    if args.out_dir and (args.shard or not args.model):
        raise FcnquantError("--out-dir holds the int8 model, table and statistics of MODEL: it needs MODEL and "
                            "the full statistics (no --shard)")
    explicit = dict(model=args.out, table=args.out_table, stats=args.save_stats, ids=args.save_ids,
                    trt_cache=args.trt_cache)
    if _defaults_apply(args):
        defaults = Outputs.beside(args.model, args.out_dir)
        stats = None if args.from_stats else defaults.stats  # saved statistics are not written again
        base = dict(model=defaults.model, table=defaults.table, stats=stats)
        return Outputs(**{k: v if v is not None else base.get(k) for k, v in explicit.items()})
    if explicit["table"] is None and args.shard is None:  # the table in the current folder, as always
        stem = Path(args.model).stem if args.model else Path(args.from_stats).stem
        explicit["table"] = f"{stem}.calib.json"
    return Outputs(**explicit)


def _print_next(args: argparse.Namespace, flow) -> None:
    """Prints the command that checks what was written: compare for an int8 model, quantize for a table alone."""
    import shlex

    written = dict(flow.written)
    table, model = written.get("table"), written.get("int8 model")
    if model is not None and args.model:
        cmd = ["fcnquant", "compare", args.model, str(model)]
        if args.data:
            cmd += ["--data", args.data]
        if table is not None:
            cmd += ["--table", str(table)]
        stats = written.get("statistics") or args.from_stats
        if stats is not None:
            cmd += ["--stats", str(stats)]
    elif table is not None and args.model and not args.shard:
        from fcnquant.cli._target import target_arg

        cmd = ["fcnquant", "quantize", args.model, "--table", str(table), "--target", target_arg(args.target),
               *(["--per-tensor"] if args.per_tensor else []), "--out", f"{Path(args.model).stem}.int8.onnx"]
    else:
        return
    print("next: " + " ".join(shlex.quote(str(c)) for c in cmd))


def _recover_options(args: argparse.Namespace):
    from fcnquant.workflows.int8 import RecoverOptions

    if args.adaround_iterations is None:
        return RecoverOptions()
    from fcnquant.recover.adaround import AdaRoundOptions

    if args.adaround_iterations < 1:
        raise FcnquantError(f"--adaround-iterations must be at least 1, got {args.adaround_iterations}")
    return RecoverOptions(adaround=AdaRoundOptions(iterations=args.adaround_iterations))


def _print_summary(args: argparse.Namespace, flow, elapsed: float) -> None:
    from fcnquant.recover.plan import format_recovery

    stats = flow.stats
    if args.from_stats:
        source = f"statistics {args.from_stats}"
    else:
        source = f"{len(stats.image_ids)} image(s) of {flow.source}" + (f", shard {args.shard}" if args.shard else "")
    print(f"calibrated {stats.model_name or args.model} from {source} in {elapsed:.1f} s")
    print(f"  {len(stats.tensors)} activation tensors observed")
    nonfinite = {n: ts.nonfinite for n, ts in stats.tensors.items() if ts.nonfinite}
    if nonfinite:
        print(f"  skipped NaN/Inf values in {len(nonfinite)} tensor(s): "
              + ", ".join(f"{n} ({c})" for n, c in list(nonfinite.items())[:5]))
    if flow.table is not None:
        print("  " + summarize_clipping(flow.table))
    weights = "per-tensor" if args.per_tensor else "per-channel"
    labels = {"int8 model": f"int8 model ({args.target}, {weights} weights)", "TensorRT calibration cache":
              "TensorRT cache", "equalized float model": "equalized float model (the table's model)"}
    order = ["statistics", "image ids", "table", "TensorRT calibration cache", "int8 model", "TensorRT cache",
             "recovery", "equalized float model"]
    lines = list(flow.written)
    if flow.plan.any and flow.quantize is not None:
        lines.append(("recovery", format_recovery(flow.recovery)))
    for what, value in sorted(lines, key=lambda item: order.index(item[0])):
        print(f"  wrote {labels.get(what, what)}: {value}")


def summarize_clipping(table) -> str:
    """Returns one line: how many tensors the method clipped inside the observed min/max, and by how much."""
    clipped = [(n, e) for n, e in table.tensors.items() if e.lo > e.min or e.hi < e.max]
    line = (f"method {table.method} ({table.target}): {len(clipped)} of {len(table.tensors)} tensors clipped "
            "inside min/max")
    ratios = sorted(max(e.hi, -e.lo) / max(e.max, -e.min) for _, e in clipped if max(e.max, -e.min) > 0)
    if ratios:
        line += f" (threshold / max|x|: median {ratios[len(ratios) // 2]:.3f}, lowest {ratios[0]:.3f})"
    return line
