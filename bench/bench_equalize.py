"""Effect of cross-layer equalization on int8 accuracy: every demo model, fp32 vs int8 with and without CLE.

For each shipped demo model: equalize it (``fcnquant.recover.equalize``), then for the original and the equalized
model calibrate with ``kl`` on 50 images of the built-in train split for ``npu-pow2``, emit int8 with per-tensor
weights (and, unless ``--no-per-channel``, per-channel weights too) and evaluate mIoU on a held-out val split
generated with another seed (default ``/tmp/fq/val1k``: ``fcnquant synth-voc /tmp/fq/val1k --train 0 --val 1000
--seed 1``). Prints a Markdown table and writes the numbers as JSON.

    python bench/bench_equalize.py --val /tmp/fq/val1k --json /tmp/cle_bench.json
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
    ap.add_argument("--no-per-channel", action="store_true", help="only per-tensor weights")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from fcnquant.calibrate import calibrate
    from fcnquant.evaluate import evaluate
    from fcnquant.quantize import quantize_model
    from fcnquant.recover import equalize

    if not Path(args.val).exists():
        print(f"missing {args.val}: run `fcnquant synth-voc {args.val} --train 0 --val 1000 --seed 1`", file=sys.stderr)
        return 2
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    rows = []
    modes = [("per-tensor", False)] + ([] if args.no_per_channel else [("per-channel", True)])
    with tempfile.TemporaryDirectory(prefix="fcnquant-cle-") as tmp:
        for name in args.models:
            src = REPO / "fcnquant" / "assets" / "demo" / f"{name}.onnx"
            eq_path = Path(tmp) / f"{name}.eq.onnx"
            t0 = time.perf_counter()
            res = equalize(src, eq_path, progress=False)
            eq_s = time.perf_counter() - t0
            row = {"model": name, "pairs": len(res.pairs), "skipped": len(res.skipped),
                   "sweeps_max": max((c["sweeps"] for c in res.chains), default=0),
                   "max_rel_diff": res.max_rel_diff, "precision": res.median_precision(), "equalize_s": eq_s,
                   "fp32": evaluate(str(src), args.val, "val", progress=False).miou,
                   "fp32_eq": evaluate(str(eq_path), args.val, "val", progress=False).miou}
            for label, path in (("base", src), ("cle", eq_path)):
                table = calibrate(str(path), method=args.method, target=args.target, num_images=args.num_images,
                                  progress=False)
                for mode, per_channel in modes:
                    q = Path(tmp) / f"{name}.{label}.{mode}.onnx"
                    quantize_model(path, table, q, target=args.target, per_channel=per_channel)
                    row[f"{label}_{mode}"] = evaluate(str(q), args.val, "val", progress=False).miou
                    print(f"{name} {label} {mode}: {row[f'{label}_{mode}']:.2f}", file=sys.stderr, flush=True)
            rows.append(row)
    print(f"\n{args.target}, {args.method}, {args.num_images} calibration images (built-in train), mIoU on "
          f"{args.val}; load average at start {' '.join(load)}\n")
    head = "| model | pairs | fp32 | fp32 equalized |" + "".join(
        f" {m} | {m} + CLE | CLE gain |" for m, _ in modes)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = [r["model"], str(r["pairs"]), f"{r['fp32']:.2f}", f"{r['fp32_eq']:.2f}"]
        for m, _ in modes:
            b, c = r[f"base_{m}"], r[f"cle_{m}"]
            cells += [f"{b:.2f} ({b - r['fp32']:+.2f})", f"{c:.2f} ({c - r['fp32']:+.2f})", f"{c - b:+.2f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
