"""Execution providers: eval, calibrate and compare on onnxruntime's CUDA provider against its CPU provider, and
where calibration's time goes on each.

Full-size fcn8s (VGG16, seeded random weights) at 320x320 on synthetic VOC images (360 px), on one machine with a
GPU and onnxruntime-gpu installed:

* whole processes as a user runs them, each command with ``--provider cpu`` and ``--provider cuda`` in turn
  (cpu, cuda, cpu, cuda ...), best of the repetitions after a warm-up: ``eval FLOAT`` and ``compare FLOAT INT8`` on
  the val images, ``calibrate --method kl --out-table`` on the train images, and a plain onnxruntime script over
  the val images on each provider (the model alone: what any tool pays);
* calibration's pass in one process, observers not overlapped, split into session building, the first run (on a
  GPU: its kernel selection), the other runs (inference and the copies of every observed tensor to the host),
  the observers (host-side work of the compiled kernel, the same on both providers) and the rest (image reading and
  preprocessing, bookkeeping);
* the results on both providers (float inference on a GPU is not bit-identical to the CPU's): the share of val
  pixels whose class agrees, the largest logit difference, and the largest relative difference of the
  calibration tables' ranges.

Writes ``bench/results/gpu.json`` (bench/README.md's schema) after every step, so a run cut short keeps what it
measured; ``python bench/report.py`` then rebuilds BENCHMARKS.md.

    python bench/bench_gpu.py                           # cpu and cuda, 2 reps (needs onnxruntime-gpu and a GPU)
    python bench/bench_gpu.py --providers cpu --reps 1 --out /tmp/g    # the CPU half alone
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_data, ensure_model, load_average, results_header, write_results  # noqa: E402
from bench_speed21 import PLAIN, timed  # noqa: E402


def gpu_name() -> str:
    """Returns the first GPU's name and driver as nvidia-smi reports them ('' without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def commands(py: str, provider: str, model: Path, quant: Path, voc: Path, work: Path, plain: Path,
             train: int, val: int) -> dict[str, list[str]]:
    """Returns {measurement: command} for one provider."""
    fq = [py, "-m", "fcnquant"]
    common = ["--provider", provider, "--no-progress"]
    vals = ["--data", str(voc), "--num-images", str(val)]
    return {
        "plain": [py, str(plain), str(model), str(voc), "val", str(val), provider],
        "eval": [*fq, "eval", str(model), "--split", "val", *vals, *common],
        "calibrate": [*fq, "calibrate", str(model), "--data", str(voc), "--num-images", str(train), "--method", "kl",
                      "--out-table", str(work / f"table_{provider}.json"), *common],
        "compare": [*fq, "compare", str(model), str(quant), *vals, *common],
    }


def breakdown(model: Path, voc: Path, train: int, provider: str) -> dict:
    """Returns the seconds of calibration's pass by part, in this process (observers not overlapped)."""
    import fcnquant.calibrate.collect as collect
    import fcnquant.calibrate.observe_loop as loop
    from fcnquant.calibrate.collect import CollectOptions, collect_stats
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig

    parts = {"session": 0.0, "first_run": 0.0, "runs": 0.0, "observers": 0.0}
    runs = [0]
    make, run, observe = collect.make_session, loop._Runner.run, loop._Observer.observe

    def timed_make(*a, **k):
        t = time.perf_counter()
        try:
            return make(*a, **k)
        finally:
            parts["session"] += time.perf_counter() - t

    def timed_run(self, images):
        t = time.perf_counter()
        try:
            return run(self, images)
        finally:
            parts["first_run" if runs[0] == 0 else "runs"] += time.perf_counter() - t
            runs[0] += 1

    def timed_observe(self, *a):
        t = time.perf_counter()
        try:
            return observe(self, *a)
        finally:
            parts["observers"] += time.perf_counter() - t

    collect.make_session, loop._Runner.run, loop._Observer.observe = timed_make, timed_run, timed_observe
    try:
        t0 = time.perf_counter()
        stats = collect_stats(model, DataConfig(root=voc, split="train", num_images=train), RunConfig(provider=provider),
                              CollectOptions(overlap=False))
        total = time.perf_counter() - t0
    finally:
        collect.make_session, loop._Runner.run, loop._Observer.observe = make, run, observe
    parts = {k: round(v, 3) for k, v in parts.items()}
    parts["rest"] = round(total - sum(parts.values()), 3)
    return {"total": round(total, 3), "parts": parts, "images": runs[0], "tensors": len(stats.tensors)}


def agreement(model: Path, voc: Path, n: int, providers: list[str]) -> dict:
    """Returns the share of pixels whose class agrees between the providers' float outputs on ``n`` val images and
    the largest absolute logit difference (the first provider is the reference)."""
    import numpy as np

    from fcnquant.data import DataConfig
    from fcnquant.execute.loop import image_batches
    from fcnquant.runtime import input_spec, make_session, resolve_providers

    sessions = [make_session(model, providers=resolve_providers(p)) for p in providers]
    name = input_spec(sessions[0])[0]
    cfg = DataConfig(root=voc, split="val", num_images=n)
    dataset = cfg.open(model)
    preset = cfg.preset_for(sessions[0])
    same = total = 0
    worst = 0.0
    for mb in image_batches(dataset, preset, cfg.choose(dataset), 1, 1, with_masks=False):
        outs = [s.run(None, {name: mb.feed})[0] for s in sessions]
        for other in outs[1:]:
            same += int((outs[0].argmax(1) == other.argmax(1)).sum())
            total += outs[0].shape[0] * outs[0].shape[2] * outs[0].shape[3]
            worst = max(worst, float(np.abs(outs[0] - other).max()))
    return {"pixels_same": same / total if total else None, "max_logit_diff": worst, "images": n}


def table_difference(a: Path, b: Path) -> float | None:
    """Returns the largest relative difference of two calibration tables' ranges, ``lo`` and ``hi`` of every tensor
    (None if either table is missing)."""
    if not (a.is_file() and b.is_file()):
        return None
    ta, tb = (json.loads(p.read_text())["tensors"] for p in (a, b))
    worst = 0.0
    for name, ra in ta.items():
        for key in ("lo", "hi"):
            va, vb = float(ra[key]), float(tb[name][key])
            worst = max(worst, abs(va - vb) / max(abs(va), abs(vb), 1e-30))
    return worst


def sections(data: dict, providers: list[str]) -> list[dict]:
    """Returns the result tables: whole processes per provider, and calibration's parts."""
    whats = {"plain": "plain onnxruntime script (the model alone)", "eval": "`eval FLOAT`",
             "calibrate": "`calibrate --method kl --out-table`", "compare": "`compare FLOAT INT8`"}
    images = {"plain": data["val"], "eval": data["val"], "calibrate": data["train"], "compare": data["val"]}
    rows = []
    for key, what in whats.items():
        best = {p: min((r["wall"] for r in data["runs"].get(f"{key}/{p}", [])), default=None) for p in providers}
        if all(v is None for v in best.values()):
            continue
        cpu_s = {p: min((r["cpu"] for r in data["runs"].get(f"{key}/{p}", [])), default=None) for p in providers}
        row = [what, images[key]]
        for p in providers:
            row.append("" if best[p] is None else f"{best[p]:.2f} s ({cpu_s[p]:.1f} s CPU)")
        if len(providers) == 2 and None not in best.values():
            row.append(f"**{best[providers[0]] / best[providers[1]]:.2f}x**")
        rows.append(row)
    cols = ["command", "images", *[f"--provider {p}: best wall (CPU s)" for p in providers]]
    if len(providers) == 2:
        cols.append(f"{providers[0]} / {providers[1]}")
    out = [{"title": "Whole processes on each provider", "columns": cols, "align": "lr" + "r" * (len(cols) - 2),
            "rows": rows,
            "notes": "Best wall time of the alternated repetitions; CPU s: the process's user + system seconds. "
                     "Every process pays its start-up and session building (on the GPU: CUDA's initialisation "
                     "and the first run's kernel selection)."}]
    brows = []
    for p in providers:
        b = data["breakdown"].get(p)
        if not b:
            continue
        parts, total = b["parts"], b["total"]
        brows.append([p, f"{total:.2f} s", *[f"{parts[k]:.2f} s ({100 * parts[k] / total:.0f} %)"
                                              for k in ("session", "first_run", "runs", "observers", "rest")]])
    if brows:
        out.append({"title": f"Calibration's pass by part ({data['train']} images, observers not overlapped)",
                    "columns": ["provider", "total", "session building", "first run", "other runs (with copies "
                                "to the host)", "observers (host)", "rest (images, kernel loading, bookkeeping)"],
                    "align": "lrrrrrr", "rows": brows,
                    "notes": "In one process through the Python API (collect_stats with overlap=False, so the parts "
                             "add up). By default the observers of image k overlap the inference of image k+1 in a "
                             "worker thread."})
    checks = []
    agree = data.get("agreement")
    if agree and agree.get("pixels_same") is not None:
        checks.append([f"val pixels whose class agrees, {providers[0]} vs {providers[1]} ({agree['images']} images)",
                       f"{100 * agree['pixels_same']:.4f} %"])
        checks.append(["largest logit difference", f"{agree['max_logit_diff']:.2e}"])
    if data.get("table_rel_diff") is not None:
        checks.append(["largest relative difference of the calibration tables' ranges (lo, hi), cpu vs cuda",
                       f"{data['table_rel_diff']:.2e}"])
    if checks:
        out.append({"title": "Results on both providers", "columns": ["what", "value"], "align": "lr",
                    "rows": checks})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", default="cpu,cuda", help="comma list of providers (default cpu,cuda)")
    ap.add_argument("--reps", type=int, default=2, help="alternated repetitions after one warm-up (default 2)")
    ap.add_argument("--train", type=int, default=32, help="calibration images (default 32)")
    ap.add_argument("--val", type=int, default=64, help="eval and compare images (default 64)")
    ap.add_argument("--skip", default="", help="comma list of: breakdown, plain, eval, calibrate, compare")
    ap.add_argument("--workdir", type=Path, default=None, help="model and data folder (default: temporary)")
    ap.add_argument("--model", help="fcn8s ONNX at 320x320 (default: exported with seeded random weights)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tmp = tempfile.TemporaryDirectory(prefix="bench-gpu-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    model = ensure_model(args.model, work)
    voc = ensure_data(work, args.train, val=args.val) / "VOC2012"
    quant = work / "fcn8s_kl.int8.onnx"
    if not quant.is_file():
        subprocess.run([py, "-m", "fcnquant", "calibrate", str(model), "--data", str(voc), "--num-images",
                        str(args.train), "--method", "kl", "--out", str(quant), "--out-table",
                        str(work / "q.calib.json"), "--no-progress"], env=env, check=True, capture_output=True)
    plain = work / "plain.py"
    plain.write_text(PLAIN)
    res = results_header("Execution providers: the CUDA provider against the CPU", "python bench/bench_gpu.py",
                         order=45)
    res["machine"]["gpu"] = gpu_name()
    print(f"load average at start {res['load_start']}; GPU {res['machine']['gpu'] or 'none'}", flush=True)
    data: dict = {"providers": providers, "reps": args.reps, "train": args.train, "val": args.val, "runs": {},
                  "breakdown": {}}
    res["data"] = data

    def save(complete: bool = False) -> Path:
        res["sections"] = sections(data, providers)
        res["complete"] = complete and not skip
        res["summary"] = (f"Full fcn8s (VGG16, seeded random weights) at 320x320, synthetic VOC (360 px); "
                          f"{res['machine']['logical_cpus']} CPUs, GPU: {res['machine']['gpu'] or 'none'}; "
                          f"onnxruntime {res['machine']['onnxruntime']}. Whole processes alternated between the "
                          f"providers, {args.reps} repetition(s) after one warm-up.")
        return write_results("gpu", res, args.out)

    if "breakdown" not in skip:
        for p in providers:
            data["breakdown"][p] = breakdown(model, voc, args.train, p)
            print(f"breakdown {p}: {data['breakdown'][p]}", flush=True)
            save()
    cmds = {p: commands(py, p, model, quant, voc, work, plain, args.train, args.val) for p in providers}
    keys = [k for k in ("plain", "eval", "calibrate", "compare") if k not in skip]
    for rep in range(args.reps + 1):  # the first round warms the caches and is not kept
        for key in keys:
            for p in providers:
                r = timed([cmds[p][key]], env)
                print(f"{'warm-up' if rep == 0 else f'rep {rep}'} {key} {p}: {r['wall']:.2f} s wall, {r['cpu']:.1f} s "
                      f"CPU, load {r['load'][0]:.2f}", flush=True)
                if rep:
                    data["runs"].setdefault(f"{key}/{p}", []).append(r)
        if rep:
            save()
    if len(providers) == 2:
        data["agreement"] = agreement(model, voc, min(args.val, 16), providers)
        data["table_rel_diff"] = table_difference(work / f"table_{providers[0]}.json",
                                                  work / f"table_{providers[1]}.json")
    path = save(complete=True)
    print(f"load average at end {[round(v, 2) for v in load_average()]}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
