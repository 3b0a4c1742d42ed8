"""Benchmark: fcnquant's int8 model vs onnxruntime quantize_static's vs fp32 (and fp16), in one run.

For one float model (default: a full-size FCN8s with seeded random weights at 320x320, exported with
``fcnquant.models``; pass ``--model`` for another) and the built-in synthetic VOC:

1. calibration: the same ``--calib`` train images feed fcnquant (``collect_stats`` + ``build_table`` with
   ``--method``) and onnxruntime's ``quantize_static`` (MinMax, per-channel, QDQ, uint8 activations / int8 weights,
   the setting its documentation recommends for x86 CPUs); both timed;
2. emission: fcnquant ``quantize_model`` (target ort-cpu, per-channel) and ``convert_fp16``;
3. accuracy on ``--heldout`` val images (not used for calibration): logit cosine similarity vs fp32 (mean and
   worst image), argmax agreement vs fp32, and mIoU against the synthetic labels;
4. latency in onnxruntime CPU: every model once per round, rounds interleaved so machine noise hits all models
   alike; median and best of ``--rounds`` after ``--warmup`` runs each.

Prints a side-by-side table; ``--json`` also writes the numbers. Targets from issue 5: our int8 latency <= ORT's
QDQ model and <= 0.6x fp32; int8 cosine >= 0.99; fp16 argmax agreement >= 99.9% and file ~0.5x.

A random-weight FCN8s says nothing about mIoU (its predictions are near-constant); its mIoU column is printed for
completeness only. Run: ``python bench/bench_quantize.py [--model M.onnx] [--calib 16] [--heldout 8]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fcnquant.runtime import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cosine, export_random_fcn8s, load_images, ort_quantize_static  # noqa: E402  (shared helpers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="float ONNX model (default: export a random-weight fcn8s)")
    p.add_argument("--size", type=int, default=320, help="input side for the exported fcn8s (default 320)")
    p.add_argument("--data", help="dataset root (default: the built-in synthetic VOC)")
    p.add_argument("--calib", type=int, default=16, help="calibration images from the train split (default 16)")
    p.add_argument("--heldout", type=int, default=8, help="held-out val images for accuracy (default 8)")
    p.add_argument("--method", nargs="+", default=["kl", "percentile", "minmax"],
                   help="fcnquant calibration method(s), one int8 model each (default: kl percentile minmax)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per model first (default 2)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--workdir", help="keep the models here (default: a temporary folder)")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    # onnxruntime's quantize_static advises its pre-processing on the root logger; the bench runs it as users do
    logging.getLogger().addFilter(lambda r: not r.getMessage().startswith("Please consider"))

    from fcnquant.calibrate.collect import collect_stats
    from fcnquant.calibrate.table import build_table
    from fcnquant.data import DataConfig, builtin_dataset, get_preset, open_dataset, select_calibration_ids
    from fcnquant.execute import RunConfig
    from fcnquant.metrics import ConfusionMatrix
    from fcnquant.quantize import QuantConfig, convert_fp16, quantize_model

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fcnquant-bench-")
        work = Path(tmp.name)
    results: dict = {"config": vars(args).copy()}
    try:
        if args.model:
            fp32 = Path(args.model)
            results["model"] = str(fp32)
        else:
            fp32 = export_random_fcn8s(work / "fcn8s.onnx", args.size)
            results["model"] = f"fcn8s {args.size}x{args.size}, seeded random weights (fcnquant.models)"
        sess = make_session(str(fp32))
        hw = tuple(sess.get_inputs()[0].shape[2:])
        del sess
        root = Path(args.data) if args.data else builtin_dataset(progress=False)
        train, val = open_dataset(root, "train"), open_dataset(root, "val")
        preset = get_preset("awesome", model_hw=hw if all(isinstance(v, int) for v in hw) else None)
        calib_ids = select_calibration_ids(train, args.calib, seed=0)
        held_ids = select_calibration_ids(val, args.heldout, seed=1)
        calib_x, _ = load_images(train, preset, calib_ids)
        held_x, held_masks = load_images(val, preset, held_ids)
        print(f"model: {results['model']}  ({fp32.stat().st_size / 1e6:.1f} MB)")
        print(f"data: {root}  calibration {len(calib_ids)} train images, held-out {len(held_ids)} val images, "
              f"preset {preset.describe()}")

        # --- calibration + emission ---------------------------------------------------------------------------
        t0 = time.perf_counter()
        stats = collect_stats(fp32, DataConfig(train, ids=tuple(calib_ids), preset=preset), RunConfig(progress=False))
        t1 = time.perf_counter()
        ours: dict[str, Path] = {}
        results["time_s"] = {"ours_collect": t1 - t0}
        for method in args.method:
            t2 = time.perf_counter()
            table_path = work / f"calib.{method}.json"
            build_table(stats, method, "ort-cpu").save(table_path)
            t3 = time.perf_counter()
            ours[method] = work / f"ours.{method}.int8.onnx"
            res = quantize_model(fp32, table_path, ours[method], QuantConfig(target="ort-cpu", per_channel=True))
            t4 = time.perf_counter()
            results["time_s"][f"ours_table_{method}"] = t3 - t2
            results["time_s"][f"ours_quantize_{method}"] = t4 - t3
            results[f"ours_float_nodes_{method}"] = list(res.float_nodes)
        theirs = work / "ort.int8.onnx"
        results["time_s"]["ort_quantize_static"] = ort_quantize_static(fp32, theirs, calib_x)["wall_s"]
        fp16 = work / "model.fp16.onnx"
        f16 = convert_fp16(fp32, fp16)

        models = {"fp32": fp32, **{f"fcnquant int8 {m}": v for m, v in ours.items()}, "ORT int8 minmax": theirs,
                  "fp16": fp16}
        sessions = {k: make_session(str(v), threads=args.threads) for k, v in models.items()}
        in_name = {k: s.get_inputs()[0].name for k, s in sessions.items()}
        in_type = {k: np.float16 if "float16" in s.get_inputs()[0].type else np.float32 for k, s in sessions.items()}

        def infer(key: str, x: np.ndarray) -> np.ndarray:
            return sessions[key].run(None, {in_name[key]: x.astype(in_type[key])})[0].astype(np.float32)

        # --- accuracy on held-out images ------------------------------------------------------------------------
        acc: dict[str, dict] = {}
        ref = [infer("fp32", x) for x in held_x]
        num_classes = ref[0].shape[1]
        for key in models:
            outs = ref if key == "fp32" else [infer(key, x) for x in held_x]
            cos = [cosine(o, r) for o, r in zip(outs, ref)]
            agree = [float((o.argmax(1) == r.argmax(1)).mean()) for o, r in zip(outs, ref)]
            cm = ConfusionMatrix(num_classes=max(num_classes, 21))
            for o, m in zip(outs, held_masks):
                if m is not None:
                    cm.update(o.argmax(1)[0], m)
            acc[key] = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                        "argmax_agreement": float(np.mean(agree)),
                        "miou": float(cm.miou()) if held_masks and held_masks[0] is not None else None}
        results["accuracy"] = acc

        # --- latency, interleaved rounds --------------------------------------------------------------------------
        x = held_x[0]
        for key in models:
            for _ in range(args.warmup):
                infer(key, x)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.rounds):
            for key in models:
                t = time.perf_counter()
                infer(key, x)
                times[key].append(time.perf_counter() - t)
        lat = {k: {"median_s": statistics.median(v), "best_s": min(v)} for k, v in times.items()}
        results["latency"] = lat
        results["size_bytes"] = {k: Path(v).stat().st_size for k, v in models.items()}
        results["fp16_clamped"] = f16.clamped
    finally:
        if tmp is not None:
            tmp.cleanup()

    # --- report ---------------------------------------------------------------------------------------------------
    base = results["latency"]["fp32"]["median_s"]
    print()
    print(f"{'':22s}{'latency med':>12s}{'best':>9s}{'x fp32':>8s}{'size MB':>9s}{'x fp32':>8s}"
          f"{'cos mean':>10s}{'cos min':>9s}{'argmax=':>9s}{'mIoU':>7s}")
    for key in results["latency"]:
        la, ac, sz = results["latency"][key], results["accuracy"][key], results["size_bytes"][key]
        miou = f"{ac['miou']:7.2f}" if ac["miou"] is not None else f"{'-':>7s}"
        print(f"{key:22s}{la['median_s'] * 1e3:10.0f}ms{la['best_s'] * 1e3:7.0f}ms{la['median_s'] / base:8.2f}"
              f"{sz / 1e6:9.1f}{sz / results['size_bytes']['fp32']:8.2f}{ac['cosine_mean']:10.5f}"
              f"{ac['cosine_min']:9.5f}{ac['argmax_agreement'] * 100:8.2f}%{miou}")
    t = results["time_s"]
    emit = ", ".join(f"{m}: table {t['ours_table_' + m]:.1f} + emit {t['ours_quantize_' + m]:.1f}" for m in args.method)
    print(f"\nquantization time (s): fcnquant collect {t['ours_collect']:.1f} once, then {emit}; "
          f"onnxruntime quantize_static {t['ort_quantize_static']:.1f}")
    lt = results["latency"]["ORT int8 minmax"]["median_s"]
    a = results["accuracy"]
    checks = []
    for m in args.method:
        key = f"fcnquant int8 {m}"
        lo = results["latency"][key]["median_s"]
        checks += [
            (f"{m}: int8 latency <= ORT int8", lo <= lt, f"{lo * 1e3:.0f} vs {lt * 1e3:.0f} ms"),
            (f"{m}: int8 latency <= 0.6x fp32", lo <= 0.6 * base, f"{lo / base:.2f}x"),
            (f"{m}: int8 cosine >= 0.99 (held-out, worst image)", a[key]["cosine_min"] >= 0.99,
             f"{a[key]['cosine_min']:.5f}"),
        ]
    checks += [
        ("fp16 argmax agreement >= 99.9%", a["fp16"]["argmax_agreement"] >= 0.999,
         f"{a['fp16']['argmax_agreement'] * 100:.3f}%"),
        ("fp16 file ~0.5x", results["size_bytes"]["fp16"] / results["size_bytes"]["fp32"] <= 0.55,
         f"{results['size_bytes']['fp16'] / results['size_bytes']['fp32']:.3f}x"),
    ]
    print()
    for name, ok, detail in checks:
        print(f"  [{'ok' if ok else 'MISS'}] {name}: {detail}")
    results["checks"] = {name: {"ok": bool(ok), "detail": detail} for name, ok, detail in checks}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
