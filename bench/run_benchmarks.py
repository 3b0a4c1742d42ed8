"""fcnquant vs onnxruntime's quantize_static, measured in one run; writes bench/results/run_benchmarks.json.

Sections (``--only`` picks some; all by default):

``calibration``  full-size fcn8s (VGG16, seeded random weights) at 320x320 on 16, 64 and 200 synthetic VOC
    images (360 px, the same images for every tool): wall time and peak memory of plain fp32 onnxruntime inference
    (the baseline), ``fcnquant`` calibration (kl as a standalone run per image count; minmax and percentile reuse
    that run's statistics and add their table time) and onnxruntime ``quantize_static`` with MinMax, Entropy and
    Percentile. Every measurement runs in its own process (peak memory = its ``ru_maxrss``); the parent watches
    each process's RSS and kills it above ``--cap-gb`` (or when the shared machine runs low), recording
    "OOM: > X GB after k images" instead of dying.
``latency``  on the same fcn8s: fp32, fp16, fcnquant int8 (kl and minmax, ort-cpu, per-channel) and onnxruntime's
    per-channel QDQ MinMax model, all calibrated on the first 16 of those images; median latency in onnxruntime
    CPU with 1 and 2 intra-op threads (interleaved rounds), file sizes, logit cosine vs fp32 and argmax agreement
    on held-out images (the val split, never used for calibration).
``miou``  every shipped demo model (``fcnquant.demo_models``): mIoU on the built-in synthetic val split of
    fp32, fp16, fcnquant int8 with kl / minmax / percentile / mse and onnxruntime quantize_static with MinMax /
    Entropy / Percentile, all calibrated on the same 50 images of the built-in train split (as the reference
    vendor toolchain used 50), beside a reference table (real VOC, a vendor toolchain).

Then a summary of the targets, each met or not with its number, and the machine facts.

    python bench/run_benchmarks.py                 # full run (~40 min on 2 cores), writes bench/results/
    python bench/run_benchmarks.py --quick         # tiny models and counts, a few minutes; writes to the workdir
    python bench/run_benchmarks.py --only latency --out /tmp/lat.json
    python bench/report.py                         # then: BENCHMARKS.md from every results file
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (GB, MB, REPO, cosine, cpu_seconds, ensure_data, ensure_model,  # noqa: E402
                     interleaved_latency, iter_images, load_average, load_images, machine_facts, max_rss_bytes,
                     md_table, mem_available_bytes, ort_quantize_static, run_watched)

SECTIONS = ("calibration", "latency", "miou")
OUR_METHODS = ("kl", "minmax", "percentile", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
# The seed's table (seeds/000_17dbd5f95b6b53b8.txt, via ../shared/REFERENCE.md): real PASCAL VOC val, real
# checkpoints, the vendor toolchain's fp16 and int8 (KL, 50 calibration images, per-channel weights).
SEED_TABLE = (
    ("fcn8s (VGG16)", "3x320x320", 50.959, 50.623, 50.611),
    ("fcn16s", "3x320x320", 53.339, 53.232, 53.217),
    ("fcn32s", "3x320x320", 49.961, 49.356, 49.339),
    ("fcn_r50_d8 20k", "3x512x512", 67.08, 66.304, 66.268),
    ("fcn_r50_d8 40k", "3x512x512", 66.97, 66.493, 66.732),
    ("fcn_r101_d8 20k", "3x512x512", 71.16, 70.175, 70.535),
    ("fcn_r101_d8 40k", "3x512x512", 69.91, 70.049, 71.181),
)
REF_ORT_GB_PER_IMAGE = 0.29  # REFERENCE.md: onnxruntime's histogram calibrators keep ~290 MB per fcn8s image


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Config:
    quick: bool
    work: Path
    model: str | None
    size: int
    width: float
    counts: list[int]
    data_size: int
    heldout: int
    latency_calib: int
    threads: list[int]
    rounds: int
    warmup: int
    cap: float
    floor: float
    skip_predicted: bool
    demo: list[str] | None
    miou_calib: int
    miou_images: int | None
    reps: int = 1
    artifacts: dict = field(default_factory=dict)


# =================================================================================================================
# children: one measurement each, in a fresh process; the last stdout line is the JSON result
# =================================================================================================================
def child_plain(spec: dict) -> dict:
    """Plain fp32 inference over the images: default session, the same loader as calibration."""
    from fcnquant.data import iter_batches, open_dataset, preset_for_session
    from fcnquant.runtime import make_session, run_logits

    t0, c0 = time.perf_counter(), cpu_seconds()
    session = make_session(spec["model"])
    ds = open_dataset(spec["data"], spec["split"])
    preset = preset_for_session(session)
    n = 0
    for batch in iter_batches(ds, preset, spec["ids"], 1, with_masks=False):
        run_logits(session, batch.images)
        n += 1
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "images": n}


def child_ours(spec: dict) -> dict:
    """fcnquant: a standalone kl calibration (``collect_stats`` + ``build_table``), then the other methods' tables
    from its statistics."""
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig, quantize_model

    t0, c0 = time.perf_counter(), cpu_seconds()
    stats = collect_stats(spec["model"], DataConfig(spec["data"], split=spec["split"], ids=tuple(spec["ids"])),
                          RunConfig(progress=False))
    table = build_table(stats, "kl", "ort-cpu")
    res = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "images": len(spec["ids"]),
           "max_rss_calibrate": max_rss_bytes(), "table_s": {}, "emit_s": {}}
    tables = {"kl": table}
    for method in spec["methods"]:
        t = time.perf_counter()
        tables[method] = build_table(stats, method, "ort-cpu")
        res["table_s"][method] = time.perf_counter() - t  # kl: timed again (deterministic, the same table)
    if spec.get("stats_out"):
        stats.save(spec["stats_out"])
    for method, out in spec.get("emit", {}).items():
        t = time.perf_counter()
        quantize_model(spec["model"], tables[method], out, QuantConfig(target="ort-cpu", per_channel=True))
        res["emit_s"][method] = time.perf_counter() - t
    return res


def child_ort(spec: dict) -> dict:
    """onnxruntime quantize_static with one calibration method, images streamed from disk one at a time."""
    from fcnquant.data import get_preset, open_dataset

    ds = open_dataset(spec["data"], spec["split"])
    preset = get_preset(spec["preset"], model_hw=tuple(spec["hw"]) if spec.get("hw") else None)
    c0 = cpu_seconds()
    res = ort_quantize_static(spec["model"], spec["out"], iter_images(ds, preset, spec["ids"]), spec["method"],
                              cache_path=spec.get("cache"), progress_path=spec.get("progress"))
    res["cpu_s"] = cpu_seconds() - c0
    return res


CHILDREN = {"plain": child_plain, "ours": child_ours, "ort": child_ort}


def run_child_main(kind: str, spec_path: str) -> int:
    logging.basicConfig(level=logging.ERROR)
    res = CHILDREN[kind](json.loads(Path(spec_path).read_text()))
    res["max_rss"] = max_rss_bytes()
    print(json.dumps(res), flush=True)
    return 0


def watched(cfg: Config, kind: str, spec: dict, progress: bool = False):
    """Returns the ChildResult of child ``kind`` run on ``spec`` under the memory cap."""
    tag = f"{kind}-{uuid.uuid4().hex[:8]}"
    spec_path = cfg.work / f"spec-{tag}.json"
    if progress:
        spec["progress"] = str(cfg.work / f"progress-{tag}.txt")
    spec_path.write_text(json.dumps(spec))
    return run_watched([sys.executable, __file__, "--child", kind, "--spec", str(spec_path)], cap_bytes=cfg.cap,
                       floor_bytes=cfg.floor, progress_path=spec.get("progress"),
                       log_path=cfg.work / f"log-{tag}.txt")


def child_failure(res) -> str:
    """Returns the note for a child that did not finish."""
    if res.stopped == "cap":
        return f"OOM: > {res.peak_rss_polled / GB:.1f} GB after {res.images_done or 0} images (killed at the cap)"
    if res.stopped == "memory":
        return (f"stopped: machine memory low (MemAvailable < floor) at {res.peak_rss_polled / GB:.1f} GB after "
                f"{res.images_done or 0} images")
    first = (res.error or "failed").strip().splitlines()
    return "failed: " + (first[0] if first else "?")


def f2(v, digits: int = 2, unit: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}{unit}"


# =================================================================================================================
# 1. calibration time and memory
# =================================================================================================================
CALIB_HEAD = ("images", "run", "wall s", "s/image", "x fp32 inference", "CPU s", "CPU x fp32", "+ emission s",
              "peak RSS GB", "load", "note")
CALIB_ALIGN = "rlrrrrrrrrl"


def calib_row(r: dict) -> list[str]:
    return [str(r["n"]), r["label"], f2(r.get("wall_s")), f2(r["wall_s"] / r["n"], 3) if r.get("wall_s") else "-",
            f2(r.get("ratio"), 2, "x"), f2(r.get("cpu_s"), 1), f2(r.get("cpu_ratio"), 2, "x"),
            f2(r.get("with_emit_s"), 1), f2(r["peak"] / GB if r.get("peak") else None, 2),
            "{:.1f}→{:.1f}".format(*r["load"]) if r.get("load") else "-", r.get("note", "")]


def section_calibration(cfg: Config) -> dict:
    from fcnquant.data import open_dataset, preset_for_session
    from fcnquant.runtime import make_session

    model = cfg.artifacts["fcn8s"]
    root = ensure_data(cfg.work, max(cfg.counts), cfg.heldout, cfg.data_size)
    ids_all = open_dataset(root, "train").ids
    session = make_session(str(model))
    preset = preset_for_session(session)
    hw = list(preset.size)
    del session
    base = {"model": str(model), "data": str(root), "split": "train"}
    say(f"\n## 1. Calibration: {model.name} at {hw[0]}x{hw[1]}, {cfg.counts} images, cap {cfg.cap / GB:.1f} GB\n")
    say(md_table(CALIB_HEAD, [], CALIB_ALIGN))
    watched(cfg, "plain", {**base, "ids": ids_all[:1]})  # warm the file cache and onnxruntime's first load
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        say(md_table(CALIB_HEAD, [calib_row(row)], CALIB_ALIGN).splitlines()[-1])

    for n in cfg.counts:
        ids = ids_all[:n]
        spec = {**base, "ids": ids}
        first = n == cfg.counts[0]
        emit_paths = {"kl": str(cfg.work / f"ours.kl.{n}.int8.onnx")}
        plains, ours_runs, failed = [], [], {}
        for rep in range(cfg.reps):  # alternated: plain, kl, plain, kl, ...; the best of each counts
            run = watched(cfg, "plain", dict(spec))
            if not run.ok:
                failed["plain"] = run
                break
            plains.append(run)
            run = watched(cfg, "ours", {**spec, "methods": ["kl", "minmax", "percentile"],
                                        "stats_out": str(cfg.work / f"stats.{n}.npz") if first and rep == 0 else None,
                                        "emit": emit_paths})
            if not run.ok:
                failed["ours"] = run
                break
            ours_runs.append(run)
        if not plains:
            emit({"n": n, "tool": "onnxruntime", "method": "fp32", "label": "fp32 inference (baseline)",
                  "note": child_failure(failed["plain"])})
            continue

        def best(runs):
            walls = [r.result["wall_s"] for r in runs]
            note = f"best of {len(runs)} (wall {', '.join(f'{w:.2f}' for w in walls)} s)" if len(runs) > 1 else ""
            top = min(runs, key=lambda r: r.result["wall_s"])
            return (top.result, min(r.result["cpu_s"] for r in runs), max(r.peak_rss for r in runs), note, top.load)

        p, p_cpu, p_peak, p_note, p_load = best(plains)
        emit({"n": n, "tool": "onnxruntime", "method": "fp32", "label": "onnxruntime fp32 inference (baseline)",
              "wall_s": p["wall_s"], "ratio": 1.0, "cpu_s": p_cpu, "cpu_ratio": 1.0, "peak": p_peak,
              "note": p_note, "load": p_load})
        if ours_runs:
            o, o_cpu, o_peak, o_note, o_load = best(ours_runs)
            o_peak = max(r.result["max_rss_calibrate"] for r in ours_runs)
            collect = o["wall_s"] - o["table_s"]["kl"]
            emit({"n": n, "tool": "fcnquant", "method": "kl", "label": "fcnquant calibrate --method kl",
                  "wall_s": o["wall_s"], "ratio": o["wall_s"] / p["wall_s"], "cpu_s": o_cpu,
                  "cpu_ratio": o_cpu / p_cpu, "with_emit_s": o["wall_s"] + o["emit_s"]["kl"],
                  "peak": o_peak, "peak_with_emit": max(r.result["max_rss"] for r in ours_runs), "load": o_load,
                  "note": f"standalone run: collect {collect:.1f} s + KL table {o['table_s']['kl']:.2f} s"
                          + (f"; {o_note}" if o_note else "")})
            for m in ("minmax", "percentile"):
                w = collect + o["table_s"][m]
                emit({"n": n, "tool": "fcnquant", "method": m, "label": f"fcnquant {m}", "wall_s": w,
                      "ratio": w / p["wall_s"], "peak": o_peak,
                      "note": f"the kl run's collection + {m} table {o['table_s'][m]:.2f} s"})
            if first:
                cfg.artifacts["stats"] = Path(cfg.work / f"stats.{n}.npz")
                cfg.artifacts["ours_kl"] = Path(emit_paths["kl"])
                cfg.artifacts["calib_ids"] = ids
        else:
            emit({"n": n, "tool": "fcnquant", "method": "kl", "label": "fcnquant calibrate --method kl",
                  "note": child_failure(failed["ours"])})
        for om in ORT_METHODS:
            label = f"onnxruntime quantize_static {om}"
            predicted = 0.4 * GB + REF_ORT_GB_PER_IMAGE * GB * n
            if om != "MinMax" and cfg.skip_predicted and predicted > cfg.cap:
                emit({"n": n, "tool": "onnxruntime", "method": om, "label": label,
                      "note": f"skipped: predicted {predicted / GB:.1f} GB > cap {cfg.cap / GB:.1f} GB "
                              f"(REFERENCE: {REF_ORT_GB_PER_IMAGE * 1000:.0f} MB/image)"})
                continue
            out = cfg.work / f"ort.{om}.{n}.int8.onnx"
            res = watched(cfg, "ort", {**spec, "preset": preset.name, "hw": hw, "method": om, "out": str(out),
                                       "cache": str(cfg.work / f"ort.{om}.{n}.ranges.json")}, progress=True)
            if res.ok:
                r = res.result
                calib = r.get("calib_s", r["wall_s"])
                emit({"n": n, "tool": "onnxruntime", "method": om, "label": label, "wall_s": calib,
                      "ratio": calib / p["wall_s"], "with_emit_s": r["wall_s"], "peak": res.peak_rss, "load": res.load,
                      "note": f"inference {r['collect_s']:.1f} s + ranges {calib - r['collect_s']:.1f} s; "
                              f"emission {r['wall_s'] - calib:.1f} s"})
                if first and om == "MinMax":
                    cfg.artifacts["ort_minmax"] = out
            else:
                emit({"n": n, "tool": "onnxruntime", "method": om, "label": label, "oom": res.stopped is not None,
                      "load": res.load,
                      "peak": res.peak_rss_polled, "images_done": res.images_done, "note": child_failure(res)})
    return {"model": str(model), "hw": hw, "counts": cfg.counts, "cap_gb": cfg.cap / GB, "rows": rows, "reps": cfg.reps,
            "ranges": compare_ranges(cfg, cfg.counts[0]),
            "data": f"synthetic VOC, {cfg.data_size} px, train_000000..train_{max(cfg.counts) - 1:06d}"}


def kl_clipping(table) -> tuple[int, int]:
    """Returns (tensors whose KL threshold is < 0.9 of their observed max|x|, tensors) of a calibration table."""
    inside = total = 0
    for e in table.tensors.values():
        amax = max(abs(e.min), abs(e.max))
        if amax > 0:
            total += 1
            inside += max(abs(e.lo), abs(e.hi)) < 0.9 * amax
    return inside, total


def compare_ranges(cfg: Config, n: int) -> dict:
    """Returns how much each tool's methods narrow the min/max range at ``n`` images (width ratio per tensor)."""
    out: dict = {"images": n}
    try:
        from onnxruntime.quantization.calibrate import load_tensors_data

        def widths(path: Path) -> dict[str, float]:
            data = load_tensors_data(path).data
            return {k: float(np.ravel(v.range_value[1])[0] - np.ravel(v.range_value[0])[0]) for k, v in data.items()}

        caches = {om: cfg.work / f"ort.{om}.{n}.ranges.json" for om in ORT_METHODS}
        if caches["MinMax"].is_file():
            base = widths(caches["MinMax"])
            for om in ("Entropy", "Percentile"):
                if caches[om].is_file():
                    w = widths(caches[om])
                    r = [w[k] / base[k] for k in base if base[k] > 0 and k in w]
                    out[f"onnxruntime {om}"] = {"tensors": len(r), "min": min(r), "max": max(r),
                                                "equal": sum(abs(x - 1) < 1e-6 for x in r),
                                                "below_0.9": sum(x < 0.9 for x in r)}
        if "stats" in cfg.artifacts:
            from fcnquant.calibrate import CalibrationStats, build_table

            stats = CalibrationStats.load(cfg.artifacts["stats"])
            for m in ("kl", "percentile"):
                inside, total = kl_clipping(build_table(stats, m, "ort-cpu"))
                out[f"fcnquant {m}"] = {"tensors": total, "below_0.9": inside}
    except Exception as exc:  # noqa: BLE001 - informative only
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def render_ranges(r: dict) -> str:
    parts = []
    for k in ("onnxruntime Entropy", "onnxruntime Percentile"):
        if k in r:
            v = r[k]
            parts.append(f"{k}: range width / MinMax width {v['min']:.3f}..{v['max']:.3f} over {v['tensors']} "
                         f"tensors ({v['equal']} exactly equal, {v['below_0.9']} below 0.9)")
    for k in ("fcnquant kl", "fcnquant percentile"):
        if k in r:
            parts.append(f"{k}: {r[k]['below_0.9']} of {r[k]['tensors']} tensors get a threshold below 0.9 of "
                         "their observed max|x|")
    if not parts:
        return ""
    return (f"\nHow much each method narrows the observed range ({r['images']} images, this random-weight model): "
            + "; ".join(parts) + ".")


def render_calibration(res: dict) -> str:
    out = [
        "## 1. Calibration time and peak memory\n",
        f"Model: `{Path(res['model']).name}` (VGG16 FCN8s, seeded random weights, {res['hw'][0]}x{res['hw'][1]}). "
        f"Images: {res['data']}; the first N for every run. Each run is a fresh process: wall time from process "
        "start of the measured call to its end (model load and image decoding included for every tool), "
        "peak RSS = the process's `ru_maxrss` (for a killed run, the largest RSS the parent saw). "
        f"A run is killed above {res['cap_gb']:.1f} GB.\n",
        "- **fcnquant kl** is a standalone `collect_stats` + `build_table(method='kl')` run (one inference pass "
        "collecting histograms, then the KL table); **minmax** and **percentile** are that run's collection time "
        "plus their own table time (`build_table` from the same statistics) - one collection serves every method.",
        "- **onnxruntime** rows time `quantize_static` (per-channel QDQ, uint8/int8, its default method "
        "parameters) up to the moment its range cache is written (calibration), and the whole call "
        "in '+ emission'. fcnquant's '+ emission' adds `quantize_model` (kl table) to the calibration.",
        "- 'x fp32 inference' = wall time / plain fp32 onnxruntime inference over the same images, measured "
        f"in the same run; the fp32 and fcnquant kl runs alternate {res.get('reps', 1)} time(s) and the best of "
        "each counts (other jobs on the shared machine come and go). CPU x compares CPU seconds (less sensitive "
        "to contention). 'load' is the machine's 1-minute load average at the start and end of the run (2 CPUs: "
        "above 2, other jobs were competing for the cores).\n",
    ]
    out.append(md_table(CALIB_HEAD, [calib_row(r) for r in res["rows"]], CALIB_ALIGN))
    out.append(render_ranges(res.get("ranges", {})))
    return "\n".join(out)


# =================================================================================================================
# 2. latency, accuracy, size
# =================================================================================================================
def section_latency(cfg: Config) -> dict:
    from fcnquant.calibrate import CalibrationStats, build_table, collect_stats
    from fcnquant.data import DataConfig, open_dataset, preset_for_session
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig, convert_fp16, quantize_model
    from fcnquant.runtime import make_session

    fp32 = cfg.artifacts["fcn8s"]
    root = ensure_data(cfg.work, max(cfg.counts), cfg.heldout, cfg.data_size)
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    preset = preset_for_session(make_session(str(fp32)))
    calib_ids = cfg.artifacts.get("calib_ids") or train.ids[:cfg.latency_calib]
    held_ids = val.ids[:cfg.heldout]
    say(f"\n## 2. Latency and accuracy: {fp32.name}, calibration {len(calib_ids)} train images, "
        f"held-out {len(held_ids)} val images\n")
    if "stats" in cfg.artifacts:
        stats = CalibrationStats.load(cfg.artifacts["stats"])
    else:
        stats = collect_stats(fp32, DataConfig(train, ids=tuple(calib_ids), preset=preset), RunConfig(progress=False))
    models: dict[str, Path] = {"fp32": fp32}
    for m in ("kl", "minmax"):
        path = cfg.artifacts.get(f"ours_{m}") or cfg.work / f"lat.ours.{m}.int8.onnx"
        if not Path(path).is_file():
            quantize_model(fp32, build_table(stats, m, "ort-cpu"), path,
                           QuantConfig(target="ort-cpu", per_channel=True))
        models[f"fcnquant int8 {m}"] = Path(path)
    ort_path = cfg.artifacts.get("ort_minmax")
    if ort_path is None:
        ort_path = cfg.work / "lat.ort.MinMax.int8.onnx"
        res = watched(cfg, "ort", {"model": str(fp32), "data": str(root), "split": "train", "ids": calib_ids,
                                   "preset": preset.name, "hw": list(preset.size), "method": "MinMax",
                                   "out": str(ort_path)})
        if not res.ok:
            raise RuntimeError(f"onnxruntime quantize_static MinMax failed: {child_failure(res)}")
    models["onnxruntime int8 MinMax"] = Path(ort_path)
    models["fp16"] = cfg.work / "lat.fp16.onnx"
    convert_fp16(fp32, models["fp16"])

    held_x, _ = load_images(val, preset, held_ids)
    sessions = {k: make_session(str(v), threads=0) for k, v in models.items()}

    def runner(sess):
        name = sess.get_inputs()[0].name
        dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        return lambda x: sess.run(None, {name: x.astype(dtype)})[0].astype(np.float32)

    infer = {k: runner(s) for k, s in sessions.items()}
    ref = [infer["fp32"](x) for x in held_x]
    acc = {}
    for key in models:
        outs = ref if key == "fp32" else [infer[key](x) for x in held_x]
        cos = [cosine(o, r) for o, r in zip(outs, ref)]
        agree = [float((o.argmax(1) == r.argmax(1)).mean()) for o, r in zip(outs, ref)]
        acc[key] = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                    "argmax_agreement": float(np.mean(agree))}
    del sessions, infer
    lat: dict[int, dict] = {}
    x = held_x[0]
    for threads in cfg.threads:
        sess = {k: runner(make_session(str(v), threads=threads)) for k, v in models.items()}
        lat[threads] = interleaved_latency({k: (lambda f=f: f(x)) for k, f in sess.items()}, cfg.rounds, cfg.warmup)
        del sess
        base = lat[threads]["fp32"]["median_s"]
        say(f"{threads} thread(s): " + ", ".join(f"{k} {v['median_s'] * 1e3:.0f} ms ({v['median_s'] / base:.2f}x)"
                                                 for k, v in lat[threads].items()))
    sizes = {k: Path(v).stat().st_size for k, v in models.items()}
    res = {"model": str(fp32), "calib_images": len(calib_ids), "heldout_images": len(held_ids),
           "threads": cfg.threads, "rounds": cfg.rounds, "warmup": cfg.warmup, "latency": lat, "accuracy": acc,
           "size_bytes": sizes}
    say("\n" + render_latency_table(res))
    return res


def render_latency_table(res: dict) -> str:
    head = ["model", "file MB", "size x fp32"]
    for t in res["threads"]:
        head += [f"{t} thread{'s' if t > 1 else ''} ms", "x fp32"]
    head += ["logit cosine mean", "cosine worst image", "argmax = fp32"]
    rows = []
    s32 = res["size_bytes"]["fp32"]
    for key, size in res["size_bytes"].items():
        row = [key, f"{size / MB:.1f}", f"{size / s32:.3f}"]
        for t in res["threads"]:
            lt = res["latency"][t]
            row += [f"{lt[key]['median_s'] * 1e3:.0f}", f"{lt[key]['median_s'] / lt['fp32']['median_s']:.2f}"]
        a = res["accuracy"][key]
        row += [f"{a['cosine_mean']:.5f}", f"{a['cosine_min']:.5f}", f"{a['argmax_agreement'] * 100:.3f}%"]
        rows.append(row)
    return md_table(head, rows)


def render_latency(res: dict) -> str:
    return "\n".join([
        "## 2. int8 / fp16 latency, size and fidelity (onnxruntime CPU)\n",
        f"Model: `{Path(res['model']).name}` (same as section 1). Every int8 model is calibrated on the same "
        f"{res['calib_images']} train images (fcnquant: target ort-cpu, per-channel int8 weights, uint8 "
        "activations; onnxruntime: `quantize_static` per-channel QDQ, MinMax, uint8/int8). fp16: "
        "`fcnquant.quantize.convert_fp16` (fp16 inputs and outputs). Latency: one 1x3xHxW image, median of "
        f"{res['rounds']} runs after {res['warmup']} warm-up runs, models interleaved round by round; "
        "intra-op threads as given. Fidelity vs fp32 on "
        f"{res['heldout_images']} held-out val images (not calibration images): cosine similarity of the logits "
        "(mean, and the worst image) and the share of pixels whose argmax class equals fp32's.\n",
        render_latency_table(res),
    ])


# =================================================================================================================
# 3. mIoU of the demo models
# =================================================================================================================
def demo_candidates(cfg: Config) -> list[tuple[str, Path | None, str]]:
    """Returns (name, path or None, note) for each model of the mIoU section."""
    from fcnquant.demo_models import DEMO_MODELS, demo_model_path
    from fcnquant.errors import FcnquantError

    out = []
    for name in cfg.demo or list(DEMO_MODELS):
        if "=" in name:
            name, path = name.split("=", 1)
            out.append((name, Path(path), "given on the command line"))
            continue
        try:
            out.append((name, demo_model_path(name), "shipped demo model"))
        except FcnquantError as exc:
            out.append((name, None, str(exc)))
    if cfg.quick and not any(p for _, p, _ in out):
        tiny = ensure_model(None, cfg.work, size=64, name="fcn8s", width=0.125)
        out = [("fcn8s-tiny", tiny, "quick stand-in: fcn8s width 0.125, 64x64, random weights (mIoU meaningless)")]
    return out


def section_miou(cfg: Config) -> dict:
    from fcnquant.data import builtin_dataset, open_dataset, select_calibration_ids

    root = builtin_dataset(progress=False)
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    calib_ids = select_calibration_ids(train, cfg.miou_calib, seed=0)
    val_ids = val.ids[:cfg.miou_images] if cfg.miou_images else val.ids
    say(f"\n## 3. mIoU: built-in synthetic VOC ({root.name}), calibration {len(calib_ids)} train images, "
        f"evaluation {len(val_ids)} val images\n")
    models = []
    for name, path, note in demo_candidates(cfg):
        if path is None:
            say(f"{name}: not measured ({note})")
            models.append({"name": name, "missing": note})
            continue
        try:
            models.append(miou_one(cfg, name, path, note, train, val, root, calib_ids, val_ids))
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the others still run
            logging.exception("mIoU of %s failed", name)
            models.append({"name": name, "missing": f"failed: {type(exc).__name__}: {exc}"})
            continue
        say("\n" + render_miou_table({"models": [models[-1]]}))
    return {"data": str(root), "calib_images": len(calib_ids), "val_images": len(val_ids), "models": models}


def miou_one(cfg: Config, name: str, path: Path, note: str, train, val, root: Path, calib_ids, val_ids) -> dict:
    """Returns the mIoU record of one model: fp32, fp16, fcnquant int8 per method, onnxruntime per method."""
    from fcnquant._io import file_sha256
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.data import DataConfig, preset_for_session
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig, convert_fp16, quantize_model
    from fcnquant.runtime import make_session

    work = cfg.work / f"miou-{name}"
    work.mkdir(exist_ok=True)
    preset = preset_for_session(make_session(str(path)))
    quiet = RunConfig(progress=False)
    scores: dict[str, dict] = {}
    times: dict[str, float] = {}
    clipped = None

    def score(key: str, model: Path) -> None:
        r = evaluate(str(model), DataConfig(val, preset=preset, ids=tuple(val_ids)), quiet)
        scores[key] = {"miou": r.miou, "miou_awesome": r.miou_awesome, "pixel_acc": r.pixel_acc}
        say(f"  {name} {key}: mIoU {r.miou:.2f}")

    score("fp32", path)
    convert_fp16(path, work / "fp16.onnx", keep_io_fp32=True)
    score("fp16", work / "fp16.onnx")
    t = time.perf_counter()
    stats = collect_stats(path, DataConfig(train, ids=tuple(calib_ids), preset=preset), quiet)
    times["fcnquant collect"] = time.perf_counter() - t
    for m in OUR_METHODS:
        try:
            t = time.perf_counter()
            table = build_table(stats, m, "ort-cpu")
            times[f"fcnquant {m} table"] = time.perf_counter() - t
            if m == "kl":
                clipped = kl_clipping(table)
            out = work / f"ours.{m}.int8.onnx"
            quantize_model(path, table, out, QuantConfig(target="ort-cpu", per_channel=True))
            score(f"fcnquant {m}", out)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            scores[f"fcnquant {m}"] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  {name} fcnquant {m}: failed: {exc}")
    for om in ORT_METHODS:
        out = work / f"ort.{om}.int8.onnx"
        res = watched(cfg, "ort", {"model": str(path), "data": str(root), "split": "train", "ids": calib_ids,
                                   "preset": preset.name, "hw": list(preset.size), "method": om,
                                   "out": str(out), "cache": str(work / f"ort.{om}.ranges.json")},
                      progress=True)
        if res.ok:
            times[f"onnxruntime {om}"] = res.result["wall_s"]
            score(f"onnxruntime {om}", out)
        else:
            scores[f"onnxruntime {om}"] = {"error": child_failure(res)}
            say(f"  {name} onnxruntime {om}: {child_failure(res)}")
    recorded, recorded_sha = None, None
    if note == "shipped demo model":
        from fcnquant.demo_models import demo_model_info

        recorded, recorded_sha = demo_model_info(name).miou, demo_model_info(name).sha256
    return {"name": name, "path": str(path), "note": note, "hw": list(preset.size), "sha256": file_sha256(path),
            "preset": preset.name, "scores": scores, "times_s": times, "recorded_fp32_miou": recorded,
            "recorded_sha256": recorded_sha, "kl_clipped": clipped}


MIOU_COLS = ["fp32", "fp16"] + [f"fcnquant {m}" for m in OUR_METHODS] + [f"onnxruntime {m}" for m in ORT_METHODS]


def render_miou_table(res: dict) -> str:
    rows = []
    for m in res["models"]:
        if "missing" in m:
            rows.append([m["name"]] + ["-"] * len(MIOU_COLS))
            continue
        base = m["scores"]["fp32"]["miou"]
        row = [f"{m['name']} ({m['hw'][0]}x{m['hw'][1]})"]
        for c in MIOU_COLS:
            s = m["scores"].get(c, {})
            if "miou" not in s:
                err = s.get("error", "")
                row.append("OOM" if "OOM" in err else ("failed" if err else "-"))
            elif c == "fp32":
                row.append(f"{s['miou']:.2f}")
            else:
                row.append(f"{s['miou']:.2f} ({s['miou'] - base:+.2f})")
        rows.append(row)
    return md_table(["model"] + MIOU_COLS, rows)


def render_miou(res: dict) -> str:
    seed_rows = [[n, i, f"{a:.3f}", f"{b:.3f} ({b - a:+.3f})", f"{c:.3f} ({c - a:+.3f})"]
                 for n, i, a, b, c in SEED_TABLE]
    notes = []
    for m in res["models"]:
        if "missing" in m:
            notes.append(f"- {m['name']}: not measured ({m['missing']}).")
        elif m.get("recorded_fp32_miou") is not None:
            same = "the file recorded there" if m.get("sha256") == m.get("recorded_sha256") else \
                "**a file whose sha256 differs from the one recorded there**"
            clip = m.get("kl_clipped")
            clip_txt = f"; KL puts {clip[0]} of {clip[1]} thresholds below 0.9 of the observed max|x|" if clip else ""
            notes.append(f"- {m['name']}: fp32 mIoU recorded in demo_models.json {m['recorded_fp32_miou']:.2f}, "
                         f"measured here {m['scores']['fp32']['miou']:.2f} (sha256 {m['sha256'][:12]}, {same})"
                         f"{clip_txt}.")
        elif m.get("note"):
            notes.append(f"- {m['name']}: {m['note']}.")
    return "\n".join([
        "## 3. mIoU: fp32 / fp16 / int8 per method, both tools\n",
        f"Built-in synthetic VOC (`fcnquant.data.builtin_dataset()`): calibration on {res['calib_images']} train "
        "images (`select_calibration_ids(train, 50, seed=0)`, the same images for every method and both tools), "
        f"evaluation on {res['val_images']} val images, mIoU in percent (mmseg convention), delta vs fp32 in "
        "brackets. fcnquant: target ort-cpu, per-channel weights; onnxruntime: `quantize_static` per-channel QDQ "
        "uint8/int8 with its default method parameters. fp16 keeps float32 inputs/outputs.\n",
        render_miou_table(res), "",
        *notes, "",
        "A reference table, for comparison (real PASCAL VOC val and real checkpoints, a vendor toolchain's fp16 "
        "and KL int8 on 50 calibration images; delta vs fp32 in brackets). Absolute scores are not comparable with "
        "the synthetic-data demo models above; the deltas are.\n",
        md_table(["model", "input", "fp32", "fp16", "int8 KL"], seed_rows),
    ])


# =================================================================================================================
# 4. targets
# =================================================================================================================
def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """Returns (issue, target, measured, status) rows; status is met / NOT met / not measured."""
    out = []
    results = {k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}

    def add(issue, target, measured, ok):
        out.append((issue, target, measured, "not measured" if ok is None else ("met" if ok else "**NOT met**")))

    cal = results.get("calibration")
    if cal:
        kl = {r["n"]: r for r in cal["rows"] if r["tool"] == "fcnquant" and r["method"] == "kl" and "wall_s" in r}
        ent = {r["n"]: r for r in cal["rows"] if r["method"] == "Entropy"}
        ratios = [(n, r["ratio"], r.get("cpu_ratio")) for n, r in sorted(kl.items())]
        ent_txt = "; onnxruntime Entropy: " + ", ".join(
            f"{n}: {f2(r.get('ratio'), 2, 'x') if 'ratio' in r else r.get('note', '-')}"
            for n, r in sorted(ent.items()))
        loads = [v for r in cal["rows"] if r["method"] in ("fp32", "kl") and r.get("load") for v in r["load"]]
        load_txt = (f"; load average {min(loads):.1f}-{max(loads):.1f} during these runs on "
                    f"{results.get('machine', {}).get('logical_cpus', '?')} CPUs" if loads else "")
        add("4", "calibrate --method kl <= 1.25x plain fp32 inference (wall)",
            ", ".join(f"{n} img: {w:.2f}x (CPU {c:.2f}x)" for n, w, c in ratios) + load_txt + ent_txt,
            all(w <= 1.25 for _, w, _ in ratios) if ratios else None)
        peaks = {n: r["peak"] for n, r in kl.items()}
        ns = sorted(peaks)
        if len(ns) >= 2:
            lo = 16 if 16 in peaks else ns[0]
            hi = 64 if 64 in peaks and lo != 64 else ns[1]
            growth = peaks[hi] / peaks[lo] - 1
            add("4", f"peak memory flat: {hi}-image peak within 10% of {lo}-image and < 1.5 GB",
                ", ".join(f"{n} img: {p / GB:.2f} GB" for n, p in sorted(peaks.items()))
                + f" (growth {growth * 100:+.1f}%)",
                growth <= 0.10 and peaks[hi] < 1.5 * GB)
        else:
            add("4", "peak memory flat (64 vs 16 images)", "-", None)
    else:
        add("4", "calibrate --method kl <= 1.25x plain fp32 inference", "-", None)
        add("4", "peak memory flat: 64-image peak within 10% of 16-image and < 1.5 GB", "-", None)
    lat = results.get("latency")
    if lat:
        for t in lat["threads"]:
            lt = lat["latency"][t]
            ours, ort, f32 = (lt[k]["median_s"] for k in ("fcnquant int8 kl", "onnxruntime int8 MinMax", "fp32"))
            add("5", f"int8 latency <= onnxruntime quantize_static's QDQ model ({t} thread{'s' if t > 1 else ''})",
                f"{ours * 1e3:.0f} ms vs {ort * 1e3:.0f} ms ({ours / ort:.2f}x)", ours <= ort)
            add("5", f"int8 latency <= 0.6x fp32 ({t} thread{'s' if t > 1 else ''})",
                f"{ours * 1e3:.0f} ms vs {f32 * 1e3:.0f} ms ({ours / f32:.2f}x)", ours <= 0.6 * f32)
        a = lat["accuracy"]
        add("5", "int8 (kl) logits cosine >= 0.99 vs fp32, held-out images",
            f"worst image {a['fcnquant int8 kl']['cosine_min']:.5f}, mean {a['fcnquant int8 kl']['cosine_mean']:.5f}"
            f" (onnxruntime MinMax worst {a['onnxruntime int8 MinMax']['cosine_min']:.5f})",
            a["fcnquant int8 kl"]["cosine_min"] >= 0.99)
        agree = a["fp16"]["argmax_agreement"]
        add("5", "fp16 argmax agreement >= 99.9% of pixels", f"{agree * 100:.3f}%", agree >= 0.999)
        ratio = lat["size_bytes"]["fp16"] / lat["size_bytes"]["fp32"]
        add("5", "fp16 file about half the fp32 size", f"{ratio:.3f}x", 0.45 <= ratio <= 0.55)
    else:
        for t in ("int8 latency <= onnxruntime's QDQ model and <= 0.6x fp32", "int8 cosine >= 0.99",
                  "fp16 argmax agreement >= 99.9% and ~half size"):
            add("5", t, "-", None)
    mi = results.get("miou")
    measured = [m for m in (mi or {}).get("models", []) if "scores" in m]
    if measured:
        for m in measured:
            s = m["scores"]
            d8 = s["fcnquant kl"]["miou"] - s["fp32"]["miou"]
            d16 = s["fp16"]["miou"] - s["fp32"]["miou"]
            ent = s.get("onnxruntime Entropy", {})
            ent_txt = f" (onnxruntime Entropy {ent['miou'] - s['fp32']['miou']:+.2f})" if "miou" in ent else ""
            add("5", f"{m['name']}: int8 kl mIoU within 1.0 of fp32", f"{d8:+.2f}{ent_txt}", abs(d8) <= 1.0)
            add("5", f"{m['name']}: fp16 mIoU within 0.1 of fp32", f"{d16:+.3f}", abs(d16) <= 0.1)
    for m in (mi or {}).get("models", []):
        if "missing" in m:
            add("5", f"{m['name']}: int8 kl within 1.0 / fp16 within 0.1 of fp32", m["missing"], None)
    if not mi:
        add("5", "demo models: int8 kl within 1.0 / fp16 within 0.1 of fp32", "-", None)
    return out


# =================================================================================================================
def to_results(results: dict, cmdline: str) -> dict:
    """Returns the run as a results file (bench/README.md's schema, format_version 2) for bench/report.py."""
    f0, f1 = results["machine"], results["machine_end"]
    sections = [{"title": "Targets",
                 "text": md_table(["target", "measured", "status"], [r[1:] for r in targets(results)], "lll")}]
    titles = {"calibration": "1. Calibration time and peak memory", "latency": "2. int8 / fp16 latency",
              "miou": "3. mIoU"}
    for key, fn in (("calibration", render_calibration), ("latency", render_latency), ("miou", render_miou)):
        if key in results and "error" in results[key]:
            sections.append({"title": titles[key], "text": f"Not measured: the section failed ({results[key]['error']})."})
        elif key in results:
            text = fn(results[key]).strip()
            head, _, body = text.partition("\n")
            sections.append({"title": head.lstrip("# ").strip(), "text": body.strip()} if head.startswith("#")
                            else {"text": text})
    return {"format_version": 2, "title": "fcnquant vs onnxruntime quantize_static: calibration, latency, mIoU",
            "order": 10, "script": cmdline, "date_utc": f0["date_utc"], "commit": f0["commit"], "machine": f0,
            "load_start": f0["load_average"], "load_end": f1["load_average"],
            "summary": f"One run of {results['elapsed_s'] / 60:.1f} min, every figure from it. The machine is "
                       "shared: each comparison is measured back to back (latency: interleaved), and CPU seconds "
                       "are given where they apply.",
            "sections": sections, "data": results}


def make_config(args: argparse.Namespace, work: Path) -> Config:
    q = args.quick
    avail = mem_available_bytes()
    cap = min(args.cap_gb * GB, max(avail - 2 * GB, 1 * GB)) if avail else args.cap_gb * GB
    return Config(
        quick=q, work=work, model=args.model, size=args.size or (128 if q else 320), width=0.25 if q else 1.0,
        counts=[int(v) for v in (args.counts or ("4,8,12" if q else "16,64,200")).split(",")],
        data_size=args.data_size or (144 if q else 360), heldout=args.heldout or (2 if q else 8),
        latency_calib=4 if q else 16, threads=[int(v) for v in args.threads.split(",")],
        rounds=args.rounds or (3 if q else 15), warmup=1 if q else 2, cap=cap, floor=args.floor_gb * GB,
        skip_predicted=args.skip_predicted_oom, demo=args.demo.split(",") if args.demo else None,
        miou_calib=args.miou_calib or (8 if q else 50), miou_images=args.miou_images or (10 if q else None),
        reps=args.reps or (1 if q else 2),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="tiny models and counts (a few minutes); writes the report "
                   "into the work folder unless --out is given")
    p.add_argument("--only", action="append", help="run only these sections (comma-separated or repeated): "
                   + ", ".join(SECTIONS))
    p.add_argument("--out", help="results file (default: bench/results/run_benchmarks.json for a full run of "
                   "every section, else <workdir>/run_benchmarks.json); then `python bench/report.py`")
    p.add_argument("--json", help="also write every number as JSON here")
    p.add_argument("--model", help="fcn8s ONNX for sections 1-2 (default /tmp/fcn8s.onnx if 320x320, else export)")
    p.add_argument("--size", type=int, help="input side of the fcn8s for sections 1-2 (default 320; quick 128)")
    p.add_argument("--counts", help="calibration image counts for section 1 (default 16,64,200; quick 4,8,12)")
    p.add_argument("--reps", type=int, help="alternated repetitions of the fp32 inference and fcnquant kl runs in "
                   "section 1, best of each counts (default 2; quick 1)")
    p.add_argument("--data-size", type=int, help="synthetic image side for sections 1-2 (default 360; quick 144)")
    p.add_argument("--heldout", type=int, help="held-out val images for section 2 (default 8; quick 2)")
    p.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread counts for latency (default 1,2)")
    p.add_argument("--rounds", type=int, help="timed latency rounds (default 15; quick 3)")
    p.add_argument("--cap-gb", type=float, default=18.0,
                   help="kill a measured process above this RSS (default 18, lowered to MemAvailable - 2 GB)")
    p.add_argument("--floor-gb", type=float, default=1.0,
                   help="also kill it when the machine's MemAvailable falls below this (default 1.0)")
    p.add_argument("--skip-predicted-oom", action="store_true",
                   help="skip onnxruntime histogram runs predicted (290 MB/image) to exceed the cap")
    p.add_argument("--demo", help="mIoU models: demo names or NAME=PATH, comma-separated (default: every demo model)")
    p.add_argument("--miou-calib", type=int, help="calibration images for section 3 (default 50; quick 8)")
    p.add_argument("--miou-images", type=int, help="val images for section 3 (default all; quick 10)")
    p.add_argument("--workdir", help="keep data, models and logs here (default: a temporary folder)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child_main(args.child, args.spec)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    logging.getLogger().addFilter(lambda r: not r.getMessage().startswith("Please consider"))
    sections = [s.strip() for v in (args.only or [",".join(SECTIONS)]) for s in v.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    full = not args.quick and set(sections) == set(SECTIONS)
    tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    elif full:
        tmp = tempfile.TemporaryDirectory(prefix="fcnquant-bench-")
        work = Path(tmp.name)
    else:  # kept: the report is written there
        work = Path(tempfile.mkdtemp(prefix="fcnquant-bench-"))
    out = Path(args.out) if args.out else (REPO / "bench" / "results" / "run_benchmarks.json" if full
                                           else work / "run_benchmarks.json")
    cmdline = "python bench/run_benchmarks.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    cfg = make_config(args, work)
    from fcnquant._io import atomic_write_text
    t0 = time.perf_counter()
    results: dict = {"machine": machine_facts(), "config": {k: str(v) for k, v in vars(args).items()}}
    m = results["machine"]
    say(f"{m['date_utc']}: {m['cpu']}, {m['logical_cpus']} CPUs, onnxruntime {m['onnxruntime']}, load average "
        f"{m['load_average'][0]:.2f}; work folder {work}; sections {sections}")
    try:
        if {"calibration", "latency"} & set(sections):
            cfg.artifacts["fcn8s"] = ensure_model(cfg.model, work, cfg.size, "fcn8s", cfg.width)
        for s, fn in (("calibration", section_calibration), ("latency", section_latency), ("miou", section_miou)):
            if s in sections:
                try:
                    results[s] = fn(cfg)
                except Exception as exc:  # noqa: BLE001 - the report says which section failed and why
                    logging.exception("section %s failed", s)
                    results[s] = {"error": f"{type(exc).__name__}: {exc}"}
                atomic_write_text(work / "results.json", json.dumps(results, indent=1, default=str) + "\n")
        results["elapsed_s"] = time.perf_counter() - t0
        results["machine_end"] = machine_facts()
        atomic_write_text(out, json.dumps(to_results(results, cmdline), indent=1, default=str) + "\n")
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1, default=str) + "\n")
        atomic_write_text(work / "results.json", json.dumps(results, indent=1, default=str) + "\n")
        say("\n## Targets\n\n" + md_table(["target", "measured", "status"], [r[1:] for r in targets(results)], "lll"))
        say(f"\nwrote {out} (then: python bench/report.py) ({results['elapsed_s'] / 60:.1f} min; load average now "
            f"{load_average()[0]:.2f})")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
