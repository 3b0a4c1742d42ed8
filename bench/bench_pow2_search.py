"""Benchmark: the npu-pow2 recovery before / after the output-error passes (scale search, auto bias correction).

For every demo model, fcnquant's one-shot flow (``fcnquant.workflows.calibrate``) emits npu-pow2 per-tensor kl models
from the 50 calibration images ``calibrate --num-images 50`` picks on the built-in synthetic train split (seed 0),
with ``recover=True`` as it was before (``scale_search=False``, ``bias_correction_error="weights"``) and as it is
now (the plan's defaults: power-of-two scales by output error, bias correction "auto"); ``fcn_r50_d8`` also gets
each new pass alone. ort-cpu per-channel kl + recover (whose plan did not change) is rerun as a check. Every model,
and fp32, is scored with ``fcnquant.evaluate`` on the 1000-image seed-1 val split of ``bench_recover.val_split``.
Each row records the flow's seconds, the load average before -> after, and the recovery record.

    .venv/bin/python bench/bench_pow2_search.py [--models ...] [--work DIR] [--out bench/results/pow2_search.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_recover import calibration_images, evaluate_miou, flow, load_avg, val_split  # noqa: E402

log = logging.getLogger("bench_pow2_search")

BEFORE = {"scale_search": False, "bias_correction_error": "weights"}
CONFIGS = (  # (name, target, per-channel, plan switches beside recover, models: None = all)
    ("recover-before", "npu-pow2", False, BEFORE, None),
    ("recover", "npu-pow2", False, {"scale_search": True, "bias_correction_error": "auto"}, None),
    ("recover, scale search only", "npu-pow2", False, {"scale_search": True}, ("fcn_r50_d8",)),
    ("recover, auto bias correction only", "npu-pow2", False, {"bias_correction_error": "auto"}, ("fcn_r50_d8",)),
    ("recover", "ort-cpu", True, {}, None),
)


def run(models, work: Path, out: Path) -> list[dict]:
    from fcnquant.demo_models import demo_model_path

    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    done = {(r["model"], r["config"], r["target"]) for r in rows}
    val = val_split(work)

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format_version": 1, "rows": rows}, indent=1))
        tmp.replace(out)

    for model in models:
        src = demo_model_path(model)
        ds, ids = calibration_images(src)
        if (model, "fp32", "-") not in done:
            rows.append({"model": model, "config": "fp32", "target": "-",
                         "miou": evaluate_miou(src, val)})
            save()
        fp = next(r["miou"] for r in rows if (r["model"], r["config"], r["target"]) == (model, "fp32", "-"))
        for name, target, per_channel, kwargs, only in CONFIGS:
            if (only is not None and model not in only) or (model, name, target) in done:
                continue
            q = work / f"{model}.{target}.{name.replace(' ', '').replace(',', '_')}.onnx"
            load0 = load_avg()
            t0 = time.perf_counter()
            res = flow(src, ds, ids, q, "kl", target, per_channel, True, **kwargs)
            seconds = time.perf_counter() - t0
            miou = evaluate_miou(q, val)
            rows.append({"model": model, "config": name, "target": target,
                         "weights": "per-channel" if per_channel else "per-tensor", "method": "kl",
                         "miou": miou, "delta": miou - fp, "seconds": seconds, "passes": res.plan.names(),
                         "plan": res.plan.to_dict(), "flow_seconds": res.to_dict()["seconds"],
                         "recovery_detail": {k: v for k, v in res.recovery.items() if k != "equalize"},
                         "load": f"{load0} -> {load_avg()}"})
            save()
            log.info("%-11s %-8s %-36s %+.3f  (%.0f s, load %s)", model, target, name, miou - fp, seconds,
                     rows[-1]["load"])
    return rows


def markdown(rows: list[dict], models) -> str:
    """Returns a table: per model, fp32 and the mIoU delta of each configuration."""
    names = [(n, t) for n, t, _, _, _ in CONFIGS]
    lines = ["| model | fp32 | " + " | ".join(f"{t} {n}" for n, t in names) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for model in models:
        fp = next((r["miou"] for r in rows if r["model"] == model and r["config"] == "fp32"), float("nan"))
        cells = []
        for n, t in names:
            r = next((r for r in rows if r["model"] == model and r["config"] == n and r["target"] == t), None)
            cells.append("-" if r is None else f"{r['delta']:+.2f} ({r['seconds']:.0f} s)")
        lines.append(f"| {model} | {fp:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    from fcnquant.demo_models import DEMO_MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    p.add_argument("--work", type=Path, default=Path("/tmp/fcnquant-bench-recover"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "pow2_search.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("fcnquant", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = run(args.models, args.work, args.out)
    print(markdown(rows, args.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
