"""Benchmark of ``--ray``: a Ray run over 64 images against the single-process run: calibrate, eval, compare, tune.

On one machine Ray cannot be faster than one process that already uses every core (onnxruntime's intra-op
threads); what this measures is the cost of distributing: the model put in the object store, scheduling, the
progress actor, per-shard sessions and the merge. The per-shard times are what a larger cluster runs in parallel.

For each model (the demo fcn_r50_d8 at 160 px, and optionally the full-size VGG16 fcn8s at 320 px with seeded
random weights), alternated ``--reps`` times: single-process ``collect_stats`` / ``evaluate`` over the images
(calibrate: statistics and the kl table, both sides) against ``fcnquant.distributed.collect`` / ``evaluate`` on a
local Ray instance started once (``num_cpus`` =
this machine's CPUs, shards = that count). ``compare`` runs both of its passes (final metrics on the 64 images,
drift on the default 16) on the int8 model emitted from 8 images. ``--tune`` adds ``fcnquant tune`` of the demo
fcn8s (npu-pow2 per-tensor, 64 tuning images, 16 ranking images, budget 0.05) in one process and on Ray. Reported:
best wall time of each, their ratio (target <= 1.3x), the first, cold Ray run (worker processes still to start),
``ray.init`` itself, per-shard seconds, and the load average before and after. Results equal the single-process run
exactly (checked here too; compare and tune with one onnxruntime thread on both sides, as the workers run).

    python bench/bench_ray.py                  # demo fcn_r50_d8 + full-size fcn8s at 320 (~10 min on 2 cores)
    python bench/bench_ray.py --models demo    # the demo model only (~2 min)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_data, ensure_model  # noqa: E402


NAMES = {"demo": "fcn_r50_d8 (demo, 160 px)", "fcn8s320": "fcn8s (VGG16 full size, 320 px)"}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _same_report(a, b) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    return da == db


def bench_model(name: str, model: str, train, val, images: int, reps: int, shards: int, work: Path) -> dict:
    from fcnquant.calibrate.api import compute_table
    from fcnquant.calibrate.collect import collect_stats
    from fcnquant.compare import compare_models
    from fcnquant.data import DataConfig
    from fcnquant.distributed import RayExecutor
    from fcnquant.execute import LocalExecutor
    from fcnquant.distributed import collect, evaluate as evaluate_on_ray
    from fcnquant.evaluate import evaluate
    from fcnquant.flow import calibrate

    quant = work / f"bench-ray-{name}.int8.onnx"
    calibrate(model, dataset=train, num_images=8, out=quant, progress=False)

    out: dict = {"model": name, "images": images, "shards": shards}
    cal_ids, val_ids = train.ids[:images], val.ids[:images]
    t0 = time.perf_counter()
    cold = collect(model, train, cal_ids, shards=shards, progress=False)
    out["calibrate_cold_ray_s"] = time.perf_counter() - t0
    times = {"calibrate_one": [], "calibrate_ray": [], "eval_one": [], "eval_ray": [], "compare_one": [],
             "compare_ray": []}
    shard_s = {"calibrate": [], "eval": []}
    cmp_data = DataConfig(val.root, ids=tuple(val_ids))
    for _ in range(reps):
        t0 = time.perf_counter()  # statistics and the kl table: what `fcnquant calibrate --out-table` gives
        one = collect_stats(model, train, cal_ids, progress=False)
        table_one = compute_table(one, "kl")
        times["calibrate_one"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run = collect(model, train, cal_ids, shards=shards, progress=False)
        table_ray = compute_table(run.result, "kl")
        times["calibrate_ray"].append(time.perf_counter() - t0)
        assert table_one.tensors == table_ray.tensors, "tables differ"
        shard_s["calibrate"].append([round(s.seconds, 2) for s in run.shards])
        assert all(np.array_equal(one.tensors[n].state()[k], run.result.tensors[n].state()[k])
                   for n in one.tensors for k in ("range", "count", "index", "hist")), "statistics differ"
        t0 = time.perf_counter()
        e1 = evaluate(model, val, ids=val_ids, progress=False)
        times["eval_one"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        er = evaluate_on_ray(model, val, val_ids, shards=shards, progress=False)
        times["eval_ray"].append(time.perf_counter() - t0)
        shard_s["eval"].append([round(s.seconds, 2) for s in er.shards])
        assert np.array_equal(e1.confusion, er.result.confusion), "confusion matrices differ"
        t0 = time.perf_counter()
        c1 = compare_models(model, quant, cmp_data, LocalExecutor(1, progress=False))
        times["compare_one"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with RayExecutor("local", shards=shards, threads=1, progress=False) as ex:
            cr = compare_models(model, quant, cmp_data, ex)
        times["compare_ray"].append(time.perf_counter() - t0)
        assert _same_report(c1, cr), "compare reports differ"
    del cold
    best = {k: min(v) for k, v in times.items()}
    out.update({k + "_s": round(v, 2) for k, v in best.items()})
    out["calibrate_ratio"] = round(best["calibrate_ray"] / best["calibrate_one"], 3)
    out["eval_ratio"] = round(best["eval_ray"] / best["eval_one"], 3)
    out["compare_ratio"] = round(best["compare_ray"] / best["compare_one"], 3)
    out["calibrate_cold_ray_s"] = round(out["calibrate_cold_ray_s"], 2)
    out["shard_seconds"] = shard_s
    out["all_times"] = {k: [round(x, 2) for x in v] for k, v in times.items()}
    return out


def bench_tune(work: Path, shards: int) -> dict:
    """Times tune of the demo fcn8s in one process and on the Ray instance that is up; checks the same result."""
    from fcnquant.demo_models import demo_model_path
    from fcnquant.distributed import RayExecutor
    from fcnquant.execute import LocalExecutor
    from fcnquant.quantize import QuantConfig
    from fcnquant.tune import ImageChoice, TuneOptions, tune

    options = TuneOptions(0.05, rank_images=16, report_isolated=False,
                          images=ImageChoice(num_calib=50, num_tune=64, num_report=64))
    quant = QuantConfig(target="npu-pow2", per_channel=False)
    out: dict = {"model": "fcn8s (demo)", "ray_cpus": shards}
    runs = {}
    executors = (("one", LocalExecutor(1, progress=False)),
                 ("ray", RayExecutor("local", shards=shards, threads=1, progress=False)))
    for tag, executor in executors:
        t0 = time.perf_counter()
        with executor:
            runs[tag] = tune(demo_model_path("fcn8s"), work / f"bench-ray-tune-{tag}.onnx", options, None, executor,
                             quant)
        out[f"tune_{tag}_s"] = round(time.perf_counter() - t0, 2)
        out[f"tune_{tag}_parts_s"] = runs[tag].seconds
    a, b = runs["one"], runs["ray"]
    assert [e.drop for e in a.evaluations] == [e.drop for e in b.evaluations], "tune evaluations differ"
    assert [f.name for f in a.float_layers] == [f.name for f in b.float_layers], "tune float layers differ"
    out.update(evaluations=len(a.evaluations), float_layers=len(a.float_layers),
               tune_ratio=round(out["tune_ray_s"] / out["tune_one_s"], 3), loadavg_after=loadavg())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,fcn8s320", help="comma list of: demo, fcn8s320")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cpus", default=None, help="comma list of local Ray instance sizes (default: 1 and this "
                    "machine's CPUs: shards one after another, and as many at once as there are cores)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--tune", action="store_true", help="also time fcnquant tune of the demo fcn8s, one process "
                    "and on Ray")
    ap.add_argument("--markdown", action="store_true", help=argparse.SUPPRESS)  # the section is always printed
    ap.add_argument("--from-json", nargs="+", metavar="F", help="print the BENCHMARKS.md section of saved runs")
    args = ap.parse_args()
    if args.from_json:
        print(section([json.loads(Path(f).read_text()) for f in args.from_json]))
        return

    from fcnquant.data import builtin_dataset, open_dataset
    from fcnquant.distributed import ray_session

    work = Path(tempfile.gettempdir()) / "fcnquant-bench"
    work.mkdir(exist_ok=True)
    cpus = os.cpu_count() or 1
    results: dict = {"loadavg_before": loadavg(), "cpus": cpus, "models": []}
    sizes = [int(c) for c in args.cpus.split(",")] if args.cpus else sorted({1, cpus})
    for n_cpus in sizes:
        t0 = time.perf_counter()
        with ray_session("local", num_cpus=n_cpus):  # what `--ray` starts: a local instance
            init_s = round(time.perf_counter() - t0, 2)
            for key in args.models.split(","):
                if key == "demo":
                    model = str(Path(__file__).resolve().parents[1] / "fcnquant" / "assets" / "demo" / "fcn_r50_d8.onnx")
                    root = builtin_dataset(progress=False)
                elif key == "fcn8s320":
                    model = str(ensure_model(None, work, 320))
                    root = ensure_data(work, args.images, args.images, 360)
                else:
                    raise SystemExit(f"unknown model {key}")
                train, val = open_dataset(root, "train"), open_dataset(root, "val")
                r = bench_model(key, model, train, val, args.images, args.reps, cpus, work)
                r.update(ray_cpus=n_cpus, ray_init_s=init_s, loadavg_after=loadavg())
                print(json.dumps(r), flush=True)
                results["models"].append(r)
            if args.tune:
                r = bench_tune(work, n_cpus)
                r["loadavg_before"] = results["loadavg_before"]
                print(json.dumps(r), flush=True)
                results.setdefault("tune", []).append(r)
    results["loadavg_after"] = loadavg()
    print(section([results]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def section(runs: list[dict]) -> str:
    """Returns the BENCHMARKS.md section for one or more saved runs of this script."""
    lines = [
        "## Ray: `--ray` on one 2-core machine (bench/bench_ray.py)",
        "",
        "Printed by `python bench/bench_ray.py --json F` (and again from saved runs by `--from-json F ...`); not "
        "part of `run_benchmarks.py`. 64 images, shards = this machine's CPU count (2), a local Ray instance started as "
        "`--ray` starts it; best wall time of the alternated repetitions, the Ray run including the model put, "
        "scheduling, the shards and the exact merge (checked equal to the single-process result in every "
        "repetition). *Ray CPUs 1*: the shards run one after another, each with the whole machine as the single "
        "process has it: the cost of distributing. *Ray CPUs 2*: both shards at once on the two cores.",
        "",
        "| model | images | Ray CPUs | calibrate: 1 process | Ray | ratio | per-shard s | eval: 1 process | Ray "
        "| ratio | per-shard s | compare: 1 process | Ray | ratio | load average before / after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for res in runs:
        for r in res["models"]:
            cal = r["shard_seconds"]["calibrate"][r["all_times"]["calibrate_ray"].index(r["calibrate_ray_s"])]
            ev = r["shard_seconds"]["eval"][r["all_times"]["eval_ray"].index(r["eval_ray_s"])]
            lines.append(
                f"| {NAMES.get(r['model'], r['model'])} | {r['images']} | {r['ray_cpus']} | {r['calibrate_one_s']:.2f} s | "
                f"{r['calibrate_ray_s']:.2f} s | {r['calibrate_ratio']:.2f}x | {', '.join(f'{x:.2f}' for x in cal)} | "
                f"{r['eval_one_s']:.2f} s | {r['eval_ray_s']:.2f} s | {r['eval_ratio']:.2f}x | "
                f"{', '.join(f'{x:.2f}' for x in ev)} | " + (
                    f"{r['compare_one_s']:.2f} s | {r['compare_ray_s']:.2f} s | {r['compare_ratio']:.2f}x | "
                    if "compare_ratio" in r else "- | - | - | ") + f"{res['loadavg_before']} / {r['loadavg_after']} |")
        for t in res.get("tune", []):
            lines.append(f"| tune {t['model']}, {t['evaluations']} evaluations | 64 | {t['ray_cpus']} | | | | | | | "
                         f"| | {t['tune_one_s']:.1f} s | {t['tune_ray_s']:.1f} s | {t['tune_ratio']:.2f}x | "
                         f"{t.get('loadavg_before', res['loadavg_before'])} / {t['loadavg_after']} |")
    inits = [r["ray_init_s"] for res in runs for r in res["models"]]
    colds = [f"{NAMES.get(r['model'], r['model'])} with {r['ray_cpus']} CPU(s) {r['calibrate_cold_ray_s']:.1f} s"
             for res in runs for r in res["models"]]
    lines += ["", "Calibrate is the statistics and the kl table on both sides (what `fcnquant calibrate --out-table` "
              "gives); compare both passes (final metrics on all images, drift on 16); tune the whole run "
              "(statistics, ranking, every evaluation, report) on the demo fcn8s at npu-pow2 per-tensor with a "
              "0.05 budget, one onnxruntime thread on both sides (as the workers run). Runs below 1x are no "
              "speed-up Ray would show on an idle machine: the load averages say other jobs shared the cores, "
              "and the scheduler gives two worker processes a bigger share than one process.",
              "", f"Starting the local instance (`ray.init`) took {min(inits):.1f}-{max(inits):.1f} s; the first "
              f"calibration on a fresh instance (worker processes still to start): {', '.join(colds)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
