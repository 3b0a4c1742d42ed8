"""Benchmark of issue 12's targets: calibration at the speed of plain inference, compare at two evaluations.

Full-size fcn8s (VGG16, seeded random weights) at 320x320 on synthetic VOC images, each measurement in a fresh
process (peak RSS is that process's own), runs alternated ``--reps`` times, best of each:

1. ``calibrate --method kl`` (statistics collection + KL table, the library calls the CLI makes) over 32 and 200
   train images against plain fp32 onnxruntime inference (default session, same loader, batch size 1) over the
   same images. Targets: <= 1.10x plain, peak RSS flat (200 vs 32 images) and < 1.5 GB.
2. ``compare`` of the int8 model (fcnquant kl, ort-cpu, calibrated on 32 train images beforehand) against fp32
   over 100 val images (final metrics on all 100, drift on the default 16) against ``evaluate`` of fp32 plus
   ``evaluate`` of int8 on the same images. Target: <= 1.3x.
3. The observer kernel's ns per value (``bench/bench_observers.py``; target <= 1.0).

The machine may be shared: ``--wait-idle`` polls /proc/loadavg every 30 s (up to ``--wait-max`` seconds) for a
1-minute load average below 1.0 before starting; the load average at the start and end of every timed run is
printed and saved, and so is the load the whole run started at.

    python bench/bench_speed.py --wait-idle     # everything (~12 min idle), writes bench/results/speed.json
    python bench/report.py                      # then: BENCHMARKS.md from every results file
    python bench/bench_speed.py --quick                     # 4/8 images, compare on 8 (a smoke run)
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
from _common import (GB, cpu_seconds, ensure_data, ensure_model, git_commit, load_average,  # noqa: E402
                     machine_facts, max_rss_bytes, run_watched)

SIZE = 320
CAP = 8 * GB  # a child above this is stopped (nothing here should come near it)


# --- the measured work, one kind per child process ----------------------------------------------------------------
def work_plain(model: str, data: str, n: int, batch: int) -> dict:
    """Plain fp32 inference over the first n train images: default session, the library's batch loader."""
    from fcnquant.data import iter_batches, open_dataset, preset_for_session
    from fcnquant.runtime import make_session, run_logits

    t0, c0 = time.perf_counter(), cpu_seconds()
    session = make_session(model)
    ds = open_dataset(data, "train")
    preset = preset_for_session(session)
    for b in iter_batches(ds, preset, ds.ids[:n], batch, with_masks=False):
        run_logits(session, b.images)
    return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0}


def work_calibrate(model: str, data: str, n: int, batch: int) -> dict:
    """fcnquant calibration: statistics over the first n train images, then the KL table (what the CLI runs)."""
    t_import = time.perf_counter()
    from fcnquant.calibrate.collect import collect_stats  # imports the observer kernels
    from fcnquant.calibrate.table import build_table
    from fcnquant.data import DataConfig, open_dataset
    from fcnquant.execute import RunConfig
    from fcnquant.observers import fused

    import_s = time.perf_counter() - t_import
    t0, c0 = time.perf_counter(), cpu_seconds()
    ds = open_dataset(data, "train")
    stats = collect_stats(model, DataConfig(ds, ids=tuple(ds.ids[:n])), RunConfig(batch_size=batch, progress=False))
    build_table(stats, "kl", "ort-cpu")
    return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "import_s": import_s,
            "compiled_kernel": fused.compiled()}


def work_evals(fmodel: str, qmodel: str, data: str, n: int, batch: int) -> dict:
    """``evaluate`` of the fp32 model, then of the int8 model, on the first n val images."""
    from fcnquant.data import DataConfig
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    val, run = DataConfig(data, split="val", num_images=n), RunConfig(batch_size=batch, progress=False)
    t0, c0 = time.perf_counter(), cpu_seconds()
    ef = evaluate(fmodel, val, run)
    t1 = time.perf_counter()
    eq = evaluate(qmodel, val, run)
    return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "fp32_s": t1 - t0,
            "int8_s": time.perf_counter() - t1, "miou": [ef.miou, eq.miou]}


def work_compare(fmodel: str, qmodel: str, data: str, n: int, batch: int) -> dict:
    """``compare_models`` int8 vs fp32 on the first n val images (default drift subsample, isolated pass on)."""
    from fcnquant.compare import compare_models
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig

    t0, c0 = time.perf_counter(), cpu_seconds()
    r = compare_models(fmodel, qmodel, DataConfig(data, num_images=n), RunConfig(batch_size=batch, progress=False))
    return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "drift_images": r.drift_count,
            "miou": [r.final.miou_float, r.final.miou_quant]}


def child(args: argparse.Namespace) -> None:
    if args.child == "plain":
        res = work_plain(args.model, args.data, args.images, args.batch)
    elif args.child == "calibrate":
        res = work_calibrate(args.model, args.data, args.images, args.batch)
    elif args.child == "evals":
        res = work_evals(args.model, args.quant, args.data, args.images, args.batch)
    else:
        res = work_compare(args.model, args.quant, args.data, args.images, args.batch)
    res["max_rss"] = max_rss_bytes()
    print(json.dumps(res))


def run_child(kind: str, model: Path, data: Path, n: int, batch: int, quant: Path | None = None,
              log: Path | None = None) -> dict:
    """Runs one measurement in a fresh process; returns its result with the load average at start and end."""
    cmd = [sys.executable, __file__, "--child", kind, "--model", str(model), "--data", str(data), "--images", str(n),
           "--batch", str(batch)]
    if quant is not None:
        cmd += ["--quant", str(quant)]
    r = run_watched(cmd, cap_bytes=CAP, log_path=log)
    if not r.ok:
        raise RuntimeError(f"{kind} child failed: {r.stopped or r.error}")
    out = dict(r.result)
    out["load"] = [round(v, 2) for v in r.load]
    out["peak_rss"] = r.peak_rss
    return out


# --- the run ------------------------------------------------------------------------------------------------------
def wait_idle(threshold: float, max_s: float, poll_s: float = 30.0) -> dict:
    """Returns {waited_s, load}: polls the 1-minute load average until it is below ``threshold`` or ``max_s``."""
    t0 = time.time()
    while True:
        load = load_average()
        print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        if load[0] < threshold or time.time() - t0 >= max_s:
            return {"waited_s": round(time.time() - t0), "load": [round(v, 2) for v in load],
                    "idle": load[0] < threshold}
        time.sleep(poll_s)


def alternate(kinds: dict[str, tuple], reps: int) -> dict[str, list[dict]]:
    """Returns {label: [result per rep]}, the labels run in turn once per rep."""
    out: dict[str, list[dict]] = {k: [] for k in kinds}
    for rep in range(reps):
        for label, spec in kinds.items():
            res = run_child(*spec)
            out[label].append(res)
            print(f"  rep {rep + 1} {label:28s} {res['wall']:7.2f} s wall {res['cpu']:7.2f} s cpu "
                  f"{res['max_rss'] / GB:5.2f} GB  load {res['load'][0]:.2f} -> {res['load'][1]:.2f}", flush=True)
    return out


def best(runs: list[dict], key: str = "wall") -> dict:
    """Returns the run with the smallest ``key``."""
    return min(runs, key=lambda r: r[key])


def make_int8(model: Path, data: Path, workdir: Path) -> Path:
    """Returns the int8 QDQ model (fcnquant kl, ort-cpu) calibrated on 32 train images (made once, not timed)."""
    out = workdir / "fcn8s_kl.int8.onnx"
    if not out.is_file():
        from fcnquant.data import DataConfig
        from fcnquant.execute import RunConfig
        from fcnquant.quantize import QuantConfig
        from fcnquant.workflows import Outputs, calibrate

        calibrate(model, DataConfig(data, split="train", num_images=32), QuantConfig(method="kl", target="ort-cpu"),
                  RunConfig(progress=False), outputs=Outputs(model=out))
    return out


def observer_bench() -> str:
    """Returns the output of bench/bench_observers.py (the kernel's ns/value)."""
    here = Path(__file__).resolve().parent
    return subprocess.run([sys.executable, str(here / "bench_observers.py"), "--reps", "5"], check=True,
                          capture_output=True, text=True).stdout


MD_BEGIN, MD_END = "<!-- bench_speed: begin -->", "<!-- bench_speed: end -->"


def _kernel_ns(text: str) -> tuple[float, float] | None:
    """Returns (wall, CPU) ns/value of the one-pass kernel line of bench_observers' output."""
    for line in text.splitlines():
        if line.startswith("TensorStats.update"):
            parts = line.split()
            nums = [float(p) for p, q in zip(parts, parts[1:]) if q == "ns/value"]
            return nums[0], nums[1]
    return None


def markdown(results: dict) -> str:
    """Returns the BENCHMARKS.md section for ``results`` (between the bench_speed markers)."""
    from _common import md_table

    m = results["machine"]
    wait = results.get("wait")
    start = results["load_at_start"]
    idle = start[0] < 1.0
    lines = [MD_BEGIN, "## 4. Calibration and compare speed (issue 12)", "",
             f"Measured on {m['date_utc']} at commit {results['commit']}. Full fcn8s (VGG16, seeded random weights) at 320x320, batch {results['batch']}, synthetic VOC; every "
             f"measurement in a fresh process, alternated, best of {results['reps']}.", ""]
    if wait:
        lines += [f"Waited {wait['waited_s']} s for a 1-minute load average below 1.0: "
                  + ("reached." if wait["idle"] else "not reached, so the run was made under load."), ""]
    lines += [f"Load average (1/5/15 min) at start {' / '.join(f'{v:.2f}' for v in start)}, at end "
              f"{' / '.join(f'{v:.2f}' for v in results.get('load_at_end', start))}: "
              + ("**measured idle**." if idle else
                 "**measured under load** (other jobs on the 2 cores: wall-time ratios are distorted, since a "
                 "process with more threads gets a larger share of contended cores; the CPU-time ratio is the "
                 "robust figure). The load at the start and end of every timed run is in the last table."), ""]
    if results.get("notes"):
        lines += [results["notes"], ""]
    rows = []
    cal = results.get("calibrate", {})
    tag = "" if idle else " (wall, under load)"
    for n, c in cal.items():
        best_c = best(c["runs"]["calibrate --method kl"])
        rows.append([f"calibrate --method kl <= 1.10x plain fp32 inference, {n} images",
                     f"{c['ratio']:.3f}x wall, {c['cpu_ratio']:.3f}x CPU (plain "
                     f"{best(c['runs']['plain fp32 inference'])['wall'] / int(n):.3f} s/img)",
                     ("met" if c["ratio"] <= 1.10 else "not met") + tag,
                     f"{best_c['load'][0]:.2f} -> {best_c['load'][1]:.2f}"])
    if cal:
        rss = {n: best(c["runs"]["calibrate --method kl"])["max_rss"] / GB for n, c in cal.items()}
        ns = list(rss)
        growth = rss[ns[-1]] / rss[ns[0]] - 1
        rows.append(["calibration peak RSS flat and < 1.5 GB",
                     ", ".join(f"{n} img: {v:.2f} GB" for n, v in rss.items()) + f" ({100 * growth:+.1f}%)",
                     "met" if max(rss.values()) < 1.5 and growth < 0.1 else "not met", "-"])
    k = _kernel_ns(results.get("observers", ""))
    if k:
        rows.append(["observer kernel (histogram + min/max, one pass) <= 1.0 ns/value",
                     f"{k[0]:.2f} ns/value wall, {k[1]:.2f} ns/value CPU", "met" if k[0] <= 1.0 else
                     ("met in CPU time" if k[1] <= 1.0 else "not met"), "see below"])
    cmp_ = results.get("compare")
    if cmp_:
        c = best(cmp_["runs"]["compare"])
        e = best(cmp_["runs"]["eval fp32 + eval int8"])
        rows.append([f"compare int8 vs fp32 <= 1.3x (eval fp32 + eval int8), {cmp_['images']} val images",
                     f"{cmp_['ratio']:.3f}x wall, {cmp_['cpu_ratio']:.3f}x CPU (compare {c['wall']:.1f} s, drift on "
                     f"{c['drift_images']}; evals {e['wall']:.1f} s); peak RSS {c['max_rss'] / GB:.2f} GB",
                     ("met" if cmp_["ratio"] <= 1.3 else "not met") + tag
                     + ("" if cmp_["cpu_ratio"] <= 1.3 else "; not met in CPU time"),
                     f"{c['load'][0]:.2f} -> {c['load'][1]:.2f}"])
    lines += [md_table(["target", "measured", "status", "load during the best run"], rows, "llll"), ""]
    runs = []
    for n, c in cal.items():
        for label, rs in c["runs"].items():
            runs += [[f"{label}, {n} img", k + 1, f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{r['max_rss'] / GB:.2f}",
                      f"{r['load'][0]:.2f} -> {r['load'][1]:.2f}"] for k, r in enumerate(rs)]
    if cmp_:
        for label, rs in cmp_["runs"].items():
            runs += [[f"{label}, {cmp_['images']} img", k + 1, f"{r['wall']:.2f}", f"{r['cpu']:.2f}",
                      f"{r['max_rss'] / GB:.2f}", f"{r['load'][0]:.2f} -> {r['load'][1]:.2f}"] for k, r in enumerate(rs)]
    if runs:
        lines += ["Every timed run (fresh process; wall and CPU seconds of the work, peak RSS, 1-minute load average "
                  "at its start and end):", "",
                  md_table(["run", "rep", "wall s", "CPU s", "peak RSS GB", "load"], runs), ""]
    if results.get("observers"):
        lines += ["Observer kernel (`bench/bench_observers.py`, 30 M fcn8s-like values, best of 5):", "", "```",
                  results["observers"].strip(), "```", ""]
    lines.append(MD_END)
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    """Replaces the bench_speed section of ``path`` (appends it when absent), atomically."""
    from fcnquant._io import atomic_write_text

    text = path.read_text() if path.is_file() else ""
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + section + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="fcn8s ONNX at 320x320 (default /tmp/fcn8s.onnx, else exported)")
    ap.add_argument("--calib-images", default="32,200", help="image counts for calibration (default %(default)s)")
    ap.add_argument("--compare-images", type=int, default=100, help="val images for compare (default 100)")
    ap.add_argument("--batch", type=int, default=1, help="batch size for every run (default 1)")
    ap.add_argument("--reps", type=int, default=2, help="alternated repetitions (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4,8 calibration images, compare on 8")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: calibrate, compare, kernel")
    ap.add_argument("--wait-idle", action="store_true", help="wait for a 1-minute load average below 1.0 first")
    ap.add_argument("--wait-max", type=float, default=900, help="longest wait for an idle machine, s (900)")
    ap.add_argument("--workdir", default=None, help="folder for data and models (default: a temporary folder)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "speed.json"),
                    help="write the results as JSON here (default bench/results/speed.json; --quick: none)")
    ap.add_argument("--markdown", default=None, help="write (or replace) the section in this Markdown file "
                    "(BENCHMARKS.md itself is rebuilt whole by bench/report.py)")
    ap.add_argument("--from-json", default=None, help="only render --markdown from a results JSON of an earlier run")
    ap.add_argument("--child", choices=["plain", "calibrate", "evals", "compare"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--quant", help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.from_json:
        write_markdown(Path(args.markdown), markdown(json.loads(Path(args.from_json).read_text())))
        return

    if args.quick and args.out == ap.get_default("out"):
        args.out = None  # a smoke run does not replace the recorded results
    counts = [4, 8] if args.quick else [int(v) for v in args.calib_images.split(",")]
    n_cmp = 8 if args.quick else args.compare_images
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tmp = tempfile.TemporaryDirectory(prefix="bench-speed-")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.model, workdir)
    data = ensure_data(workdir, max(counts), val=n_cmp)
    results: dict = {"machine": machine_facts(), "commit": os.environ.get("BENCH_COMMIT") or git_commit(), "model": str(model), "batch": args.batch,
                     "reps": args.reps}
    quant = make_int8(model, data, workdir) if "compare" not in skip else None
    run_child("plain", model, data, 1, args.batch)  # warm the file cache and onnxruntime's first-load costs
    if args.wait_idle:
        print("waiting for an idle machine (1-minute load average < 1.0):", flush=True)
        results["wait"] = wait_idle(1.0, args.wait_max)
    results["load_at_start"] = [round(v, 2) for v in load_average()]
    print(f"model {model}, batch {args.batch}, {os.cpu_count()} CPUs, load average at start "
          f"{results['load_at_start']}", flush=True)

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    if "calibrate" not in skip:
        results["calibrate"] = {}
        for n in counts:
            print(f"calibrate --method kl vs plain fp32 inference, {n} images:", flush=True)
            runs = alternate({"plain fp32 inference": ("plain", model, data, n, args.batch),
                              "calibrate --method kl": ("calibrate", model, data, n, args.batch)}, args.reps)
            p, c = best(runs["plain fp32 inference"]), best(runs["calibrate --method kl"])
            cpu_ratio = best(runs["calibrate --method kl"], "cpu")["cpu"] / best(runs["plain fp32 inference"], "cpu")["cpu"]
            results["calibrate"][str(n)] = {"runs": runs, "ratio": c["wall"] / p["wall"], "cpu_ratio": cpu_ratio}
            print(f"  best: plain {p['wall']:.2f} s ({p['wall'] / n:.3f} s/img), calibrate {c['wall']:.2f} s: "
                  f"{c['wall'] / p['wall']:.3f}x wall, {cpu_ratio:.3f}x CPU; peak RSS "
                  f"{c['max_rss'] / GB:.2f} GB (plain {p['max_rss'] / GB:.2f} GB); imports "
                  f"{c['import_s']:.2f} s (not in the timing)", flush=True)
            save()
        rss = [best(results["calibrate"][str(n)]["runs"]["calibrate --method kl"])["max_rss"] for n in counts]
        results["calibrate_rss_growth"] = rss[-1] / rss[0] - 1
        print(f"calibration peak RSS {rss[0] / GB:.2f} GB at {counts[0]} images, {rss[-1] / GB:.2f} GB at "
              f"{counts[-1]}: {100 * results['calibrate_rss_growth']:+.1f}%", flush=True)
    if "compare" not in skip:
        print(f"compare int8 vs fp32 vs eval fp32 + eval int8, {n_cmp} val images:", flush=True)
        runs = alternate({"eval fp32 + eval int8": ("evals", model, data, n_cmp, args.batch, quant),
                          "compare": ("compare", model, data, n_cmp, args.batch, quant)}, args.reps)
        e, c = best(runs["eval fp32 + eval int8"]), best(runs["compare"])
        cpu_ratio = best(runs["compare"], "cpu")["cpu"] / best(runs["eval fp32 + eval int8"], "cpu")["cpu"]
        results["compare"] = {"runs": runs, "images": n_cmp, "ratio": c["wall"] / e["wall"], "cpu_ratio": cpu_ratio}
        print(f"  best: evals {e['wall']:.2f} s (fp32 {e['fp32_s']:.2f} + int8 {e['int8_s']:.2f}), compare "
              f"{c['wall']:.2f} s (drift on {c['drift_images']}): {c['wall'] / e['wall']:.3f}x wall, "
              f"{cpu_ratio:.3f}x CPU; peak RSS compare {c['max_rss'] / GB:.2f} GB, evals "
              f"{e['max_rss'] / GB:.2f} GB; mIoU equal: {c['miou'] == e['miou']}", flush=True)
        save()
    if "kernel" not in skip:
        text = observer_bench()
        results["observers"] = text
        print(text, flush=True)
    results["load_at_end"] = [round(v, 2) for v in load_average()]
    print(f"load average at end {results['load_at_end']}")
    save()
    if args.markdown:
        write_markdown(Path(args.markdown), markdown(results))
        print(f"wrote the section into {args.markdown}")


if __name__ == "__main__":
    main()
