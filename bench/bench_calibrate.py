"""Benchmark of `fcnquant calibrate`: time vs plain fp32 inference, peak memory vs image count, KL clipping.

Full-size fcn8s (VGG16, random weights) at 320x320 on synthetic VOC images, all in one run:

1. Speed: plain fp32 onnxruntime inference over N images (default session, same image loader) against our
   calibration with ``--method kl`` over the same images (statistics collection + KL table), alternated
   ``--reps`` times; wall and CPU seconds, best of the repetitions. Target: calibration <= 1.25x plain.
   ``--variants`` adds the collection loop with the observers in a worker thread beside the next run (the
   default on an accelerator; on the CPU they run in line, shared by the cores) and with ORT_ENABLE_EXTENDED.
2. Memory: peak RSS (``ru_maxrss``) of a fresh process calibrating 16 and 64 images (plain inference too).
   Target: 64 images within 10 % of 16, below 1.5 GB.
3. Clipping: share of tensors whose KL threshold is well inside their range (< 0.9 max|x|), from the 64-image
   statistics, and a check that the minmax table equals the observed min/max.

The machine may be shared: the load average is printed before and after; CPU seconds are less sensitive to
contention than wall seconds.

    python bench/bench_calibrate.py            # 16 timed images x 2 reps, RSS at 16 and 64 images (~5 min)
    python bench/bench_calibrate.py --quick    # 4 timed images, RSS at 4 and 8 images
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, ensure_data, ensure_model  # noqa: E402  (helpers shared by the bench scripts)

SIZE = 320


def run_plain(model: Path, data: Path, n: int) -> dict:
    """Plain fp32 inference over the first n train images: default session, the same batch loader."""
    from fcnquant.data import iter_batches, open_dataset, preset_for_session
    from fcnquant.runtime import make_session, run_logits

    t0, c0 = time.perf_counter(), cpu_seconds()
    session = make_session(model)
    ds = open_dataset(data, "train")
    preset = preset_for_session(session)
    for batch in iter_batches(ds, preset, ds.ids[:n], 1, with_masks=False):
        run_logits(session, batch.images)
    return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0}


def run_calibrate(model: Path, data: Path, n: int, *, overlap: bool | None = None, optimization: str = "all",
                  stats_out: str | None = None) -> dict:
    """Our calibration: collection over the first n train images, then the KL table."""
    from fcnquant.calibrate.collect import CollectOptions, collect_stats
    from fcnquant.calibrate.table import build_table
    from fcnquant.data import DataConfig, open_dataset
    from fcnquant.execute import RunConfig

    t0, c0 = time.perf_counter(), cpu_seconds()
    ds = open_dataset(data, "train")
    stats = collect_stats(model, DataConfig(ds, ids=tuple(ds.ids[:n])), RunConfig(progress=False),
                          CollectOptions(overlap=overlap, optimization=optimization))
    t1 = time.perf_counter()
    build_table(stats, "kl", "ort-cpu")
    res = {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "table_s": time.perf_counter() - t1}
    if stats_out:
        stats.save(stats_out)
    return res


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints JSON with peak RSS."""
    if args.child == "plain":
        res = run_plain(Path(args.model), Path(args.data), args.images)
    else:
        res = run_calibrate(Path(args.model), Path(args.data), args.images, stats_out=args.stats_out)
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def in_child(kind: str, model: Path, data: Path, n: int, stats_out: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", str(model), "--data", str(data), "--images", str(n)]
    if stats_out:
        cmd += ["--stats-out", stats_out]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def clipping(stats_path: str) -> dict:
    from fcnquant.calibrate.stats import CalibrationStats
    from fcnquant.calibrate.table import build_table

    stats = CalibrationStats.load(stats_path)
    kl = build_table(stats, "kl", "ort-cpu")
    mm = build_table(stats, "minmax", "ort-cpu")
    ratios = {}
    for name, e in kl.tensors.items():
        amax = max(e.max, -e.min)
        ratios[name] = max(e.hi, -e.lo) / amax if amax > 0 else 1.0
    exact = all((m.lo, m.hi) == (stats.tensors[n].min, stats.tensors[n].max) for n, m in mm.tensors.items())
    return {"ratios": ratios, "minmax_exact": exact, "tensors": len(ratios),
            "well_inside": sum(r < 0.9 for r in ratios.values()), "clipped": sum(r < 1.0 for r in ratios.values())}


def minmax_matches_numpy(model: Path, data: Path, n: int = 2) -> bool:
    """Independent check on n images: our min/max == np.min/np.max of onnxruntime's own exposed activations."""
    import onnx
    import onnxruntime as ort

    from fcnquant.calibrate.collect import collect_stats
    from fcnquant.calibrate.tensors import activation_tensors
    from fcnquant.data import DataConfig, get_preset, open_dataset
    from fcnquant.execute import RunConfig

    m = onnx.load(str(model))
    names = activation_tensors(m)
    for name in names[1:]:
        if name not in {o.name for o in m.graph.output}:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ds = open_dataset(data, "train")
    preset = get_preset("awesome", model_hw=(SIZE, SIZE))
    lo = {k: np.inf for k in names}
    hi = {k: -np.inf for k in names}
    for i in ds.ids[:n]:
        x = preset.transform(ds.load_image(i))[0][None]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {names[0]: x})))
        outs[names[0]] = x
        for k in names:
            lo[k], hi[k] = min(lo[k], float(np.min(outs[k]))), max(hi[k], float(np.max(outs[k])))
    stats = collect_stats(model, DataConfig(ds, ids=tuple(ds.ids[:n])), RunConfig(progress=False))
    return all((stats.tensors[k].min, stats.tensors[k].max) == (lo[k], hi[k]) for k in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="fcn8s ONNX at 320x320 (default /tmp/fcn8s.onnx, else exported)")
    ap.add_argument("--quick", action="store_true", help="small run: 4 timed images, RSS at 4 and 8 images")
    ap.add_argument("--images", type=int, help="timed images (default 16, quick 4)")
    ap.add_argument("--reps", type=int, default=2, help="alternated repetitions of the timing (default 2)")
    ap.add_argument("--rss", default=None, help="image counts for the RSS runs, e.g. 16,64")
    ap.add_argument("--variants", action="store_true", help="also time serial observers and ORT_ENABLE_EXTENDED")
    ap.add_argument("--workdir", help="folder for data and statistics (default: a temporary folder)")
    ap.add_argument("--child", choices=["plain", "calibrate"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--stats-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    n = args.images or (4 if args.quick else 16)
    rss_counts = [int(v) for v in (args.rss or ("4,8" if args.quick else "16,64")).split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="bench-calib-")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.model, workdir)
    data = ensure_data(workdir, max([n] + rss_counts))
    print(f"model {model} ({os.path.getsize(model) / 1e6:.0f} MB), {n} timed images at {SIZE}x{SIZE}, "
          f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")

    # 1. speed, alternating so that contention hits both sides alike
    variants = {"plain fp32 inference": lambda: run_plain(model, data, n),
                "calibrate --method kl": lambda: run_calibrate(model, data, n)}
    if args.variants:
        variants["  (observer thread beside the run)"] = lambda: run_calibrate(model, data, n, overlap=True)
        variants["  (ORT_ENABLE_EXTENDED)"] = lambda: run_calibrate(model, data, n, optimization="extended")
    run_plain(model, data, 1)  # warm the file cache and onnxruntime's first-load costs
    times: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for k, f in variants.items():
            times[k].append(f())
    base_w = min(t["wall"] for t in times["plain fp32 inference"])
    base_c = min(t["cpu"] for t in times["plain fp32 inference"])
    head = f"speed over {n} images"
    print(f"\n{head:34} {'wall s':>8} {'s/img':>7} {'x plain':>8} {'cpu s':>8} {'x plain':>8}")
    for k, ts in times.items():
        w, c = min(t["wall"] for t in ts), min(t["cpu"] for t in ts)
        print(f"{k:34} {w:8.2f} {w / n:7.3f} {w / base_w:8.3f} {c:8.2f} {c / base_c:8.3f}")
    walls = {k.strip(" ()"): ", ".join(f"{t['wall']:.2f}" for t in ts) for k, ts in times.items()}
    print(f"(best of {args.reps}; all wall times: " + "; ".join(f"{k}: {v}" for k, v in walls.items()) + ")")

    # 2. memory, each in a fresh process
    cols = " ".join(f"{str(c) + ' img':>10}" for c in rss_counts)
    print(f"\n{'peak RSS (fresh process)':34} {cols} {'growth':>8}")
    stats_path = str(workdir / "stats.npz")
    rows = {}
    for kind in ("plain", "calibrate"):
        rows[kind] = [in_child(kind, model, data, c, stats_path if kind == "calibrate" else None) for c in rss_counts]
        mb = [r["max_rss_mb"] for r in rows[kind]]
        print(f"{kind:34} " + " ".join(f"{m:8.0f}MB" for m in mb) + f" {100 * (mb[-1] / mb[0] - 1):7.1f}%")

    # 3. clipping, from the last (largest) calibration run
    clip = clipping(stats_path)
    print(f"\nKL (ort-cpu) on {rss_counts[-1]} images: {clip['well_inside']} of {clip['tensors']} tensors clipped "
          f"well inside max|x| (threshold < 0.9 max|x|), {clip['clipped']} clipped at all; "
          f"minmax table == observed min/max: {clip['minmax_exact']}")
    print(f"minmax == np.min/np.max of onnxruntime's exposed activations (independent session, 2 images): "
          f"{minmax_matches_numpy(model, data)}")
    print("  threshold / max|x| per tensor: " + ", ".join(f"{r:.2f}" for r in clip["ratios"].values()))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
