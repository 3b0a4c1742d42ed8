"""Effect of cross-layer equalization (and power-of-two alignment) on int8 accuracy, every demo model.

For each shipped demo model: equalize it (``fcnquant.recover.equalize``), then for the original (``base``) and the
equalized model (``cle``) calibrate with ``kl`` on 50 images of the built-in train split for ``npu-pow2``, emit int8
with per-tensor weights (``--modes``: also per-channel) and evaluate mIoU on a held-out val split generated with
another seed (default ``/tmp/fq/val1k``: ``fcnquant synth-voc /tmp/fq/val1k --train 0 --val 1000 --seed 1``).
``cle+align`` also rescales the equalized model's channel spaces onto power-of-two grids with the calibrated
thresholds (``fcnquant.recover.align_pow2``) and emits with those thresholds divided by each space's factor
(exact: the model computes the old tensors divided by it). Prints a Markdown table and writes the numbers as JSON.

    python bench/bench_equalize.py --val /tmp/fq/val1k --json /tmp/cle_bench.json
    python bench/bench_equalize.py --models fcn8s --variants base cle cle+align --modes per-tensor
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", default="/tmp/fq/val1k", help="held-out VOC-layout val split (default %(default)s)")
    ap.add_argument("--models", nargs="+", default=["fcn8s", "fcn16s", "fcn32s", "fcn_r50_d8"])
    ap.add_argument("--method", default="kl")
    ap.add_argument("--target", default="npu-pow2")
    ap.add_argument("--num-images", type=int, default=50, help="calibration images (built-in train split)")
    ap.add_argument("--variants", nargs="+", default=["base", "cle", "cle+align"],
                    choices=["base", "cle", "cle+align"])
    ap.add_argument("--modes", nargs="+", default=["per-tensor", "per-channel"], choices=["per-tensor", "per-channel"])
    ap.add_argument("--fp32-eq", action="store_true", help="also evaluate the equalized float model")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from fcnquant.calibrate import calibrate
    from fcnquant.evaluate import evaluate
    from fcnquant.quantize import quantize_model
    from fcnquant.execute import RunConfig
    from fcnquant.recover import equalize

    if not Path(args.val).exists():
        print(f"missing {args.val}: run `fcnquant synth-voc {args.val} --train 0 --val 1000 --seed 1`", file=sys.stderr)
        return 2
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    rows = []
    modes = [(m, m == "per-channel") for m in args.modes]
    with tempfile.TemporaryDirectory(prefix="fcnquant-cle-") as tmp:
        for name in args.models:
            src = REPO / "fcnquant" / "assets" / "demo" / f"{name}.onnx"
            eq_path = Path(tmp) / f"{name}.eq.onnx"
            t0 = time.perf_counter()
            res = equalize(src, eq_path, run=RunConfig(progress=False))
            eq_s = time.perf_counter() - t0
            row = {"model": name, "pairs": len(res.pairs), "skipped": len(res.skipped),
                   "sweeps_max": max((c["sweeps"] for c in res.chains), default=0),
                   "max_rel_diff": res.max_rel_diff, "precision": res.median_precision(), "equalize_s": eq_s,
                   "fp32": evaluate(str(src), args.val, "val", progress=False).miou}
            if args.fp32_eq:
                row["fp32_eq"] = evaluate(str(eq_path), args.val, "val", progress=False).miou
            tables = {}
            for label in args.variants:
                path = {"base": src, "cle": eq_path, "cle+align": Path(tmp) / f"{name}.aligned.onnx"}[label]
                if label == "cle+align":
                    if "cle" not in tables:
                        tables["cle"] = calibrate(str(eq_path), method=args.method, target=args.target,
                                                  num_images=args.num_images, progress=False)
                    table, info = aligned(eq_path, tables["cle"], path, args.target)
                    row["align"] = info
                else:
                    table = calibrate(str(path), method=args.method, target=args.target,
                                      num_images=args.num_images, progress=False)
                    tables[label] = table
                for mode, per_channel in modes:
                    q = Path(tmp) / f"{name}.{label}.{mode}.onnx"
                    quantize_model(path, table, q, target=args.target, per_channel=per_channel)
                    row[f"{label}_{mode}"] = evaluate(str(q), args.val, "val", progress=False).miou
                    print(f"{name} {label} {mode}: {row[f'{label}_{mode}']:.2f}", file=sys.stderr, flush=True)
            rows.append(row)
    print(f"\n{args.target}, {args.method}, {args.num_images} calibration images (built-in train), mIoU on "
          f"{args.val}; load average at start {' '.join(load)}\n")
    head = "| model | pairs | fp32 |" + "".join(f" {v} {m} |" for m, _ in modes for v in args.variants)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = [r["model"], str(r["pairs"]), f"{r['fp32']:.2f}"]
        for m, _ in modes:
            for v in args.variants:
                q = r[f"{v}_{m}"]
                cells.append(f"{q:.2f} ({q - r['fp32']:+.2f})")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "rows": rows}, indent=1))
    return 0


def aligned(eq_path: Path, table, out: Path, target: str):
    """Returns (the table for the aligned model, a summary) after aligning ``eq_path`` with ``table``'s thresholds."""
    import dataclasses

    import onnx

    from fcnquant._io import file_sha256
    from fcnquant.calibrate import TensorEntry
    from fcnquant.calibrate.qparams import qparams
    from fcnquant.recover import align_pow2

    res = align_pow2(onnx.load(str(eq_path)), {k: max(abs(e.lo), abs(e.hi)) for k, e in table.tensors.items()})
    onnx.save(res.model, str(out))
    entries = dict(table.tensors)
    factors = {t: s.factor for s in res.spaces for t in s.tensors}
    for name, a in factors.items():
        e = entries[name]
        scale, zp = qparams(e.lo / a, e.hi / a, target)
        entries[name] = TensorEntry(e.min / a, e.max / a, e.lo / a, e.hi / a, scale, zp)
    before, after = res.waste()
    new = dataclasses.replace(table, tensors=entries, model_sha256=file_sha256(out), model=out.name)
    return new, {"spaces": len(res.spaces), "skipped": len(res.skipped), "waste_before": before,
                 "waste_after": after}


if __name__ == "__main__":
    sys.exit(main())
