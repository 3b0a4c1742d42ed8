"""AdaRound vs round-to-nearest on the demo models: mIoU on held-out images and the time AdaRound takes.

For each model and setup (ort-cpu per-channel; npu-pow2 per-tensor): calibrate kl on 50 images of the built-in
train split, emit int8 with nearest weights, run ``fcnquant.recover.adaround`` (float inputs unless --inputs),
emit its model with the same scales, and score fp32, nearest and AdaRound on the val split of --val (default
/tmp/fq/val1k: ``fcnquant synth-voc /tmp/fq/val1k --train 0 --val 1000 --seed 1``). Writes a JSON line per run
to --json and prints a Markdown table. The load average is recorded with every timing.

    OPENBLAS_NUM_THREADS=1 python bench/bench_adaround.py --models fcn8s fcn_r50_d8 --json /tmp/ada/bench.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETUPS = {"ort-cpu": ("ort-cpu", True), "npu-pow2-pt": ("npu-pow2", False)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["fcn8s", "fcn_r50_d8"])
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--val", default="/tmp/fq/val1k")
    ap.add_argument("--num-images", type=int, default=50)
    ap.add_argument("--iterations", type=int, nargs="+", default=[1000])
    ap.add_argument("--inputs", default="float")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fp32", action="store_true", help="skip scoring the float model")
    args = ap.parse_args(argv)

    from fcnquant.calibrate.api import calibrate, choose_ids, open_calibration_data
    from fcnquant.evaluate import evaluate
    from fcnquant.quantize import quantize_model
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.recover import AdaRoundOptions, adaround

    ds = open_calibration_data(None, "train", progress=False)
    ids = choose_ids(ds, args.num_images, progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ada-") as tmp:
        tmp = Path(tmp)
        for name in args.models:
            model = REPO / "fcnquant" / "assets" / "demo" / f"{name}.onnx"
            fp32 = None if args.no_fp32 else evaluate(model, args.val, "val", progress=False).miou
            for setup in args.setups:
                target, per_channel = SETUPS[setup]
                table = calibrate(model, method="kl", target=target, ids=ids, progress=False)
                near = tmp / f"{name}.{setup}.near.onnx"
                quantize_model(model, table, near, target=target, per_channel=per_channel)
                miou_near = evaluate(near, args.val, "val", progress=False).miou
                for iterations in args.iterations:
                    load = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    res = adaround(model, table, DataConfig(root=ds, ids=tuple(ids)),
                                   QuantConfig(target=target, per_channel=per_channel), RunConfig(progress=False),
                                   AdaRoundOptions(iterations=iterations, inputs=args.inputs))
                    seconds = time.perf_counter() - t0
                    load = (load + os.getloadavg()[0]) / 2
                    snapped = res.save_model(tmp / f"{name}.{setup}.ada.onnx")
                    ada = tmp / f"{name}.{setup}.ada.int8.onnx"
                    quantize_model(snapped, table, ada, target=target, per_channel=per_channel,
                                   weight_scales=res.weight_scales, verify_table=False)
                    miou_ada = evaluate(ada, args.val, "val", progress=False).miou
                    row = {"model": name, "setup": setup, "iterations": iterations, "inputs": args.inputs,
                           "fp32": fp32, "nearest": miou_near, "adaround": miou_ada, "seconds": round(seconds, 1),
                           "load": round(load, 1), "layers": len(res.layers),
                           "mean_gain": round(sum(s.gain for s in res.layers) / max(len(res.layers), 1), 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
    print("\n| model | setup | fp32 | nearest | AdaRound | AdaRound time (load) | layer loss removed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        d = (lambda v: f"{v - r['fp32']:+.2f}" if r["fp32"] is not None else f"{v:.2f}")
        print(f"| {r['model']} | {r['setup']} | {r['fp32'] or float('nan'):.2f} | {d(r['nearest'])} | "
              f"{d(r['adaround'])} | {r['seconds']:.0f} s ({r['load']}) | {100 * r['mean_gain']:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
