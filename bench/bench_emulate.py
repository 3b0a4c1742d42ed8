"""The integer emulator against onnxruntime's QDQ simulation: accuracy on every demo model, speed on the full fcn8s.

One run, side by side:

- per demo model, its npu-pow2 int8 model with per-tensor weights (``fcnquant calibrate --target npu-pow2
  --per-tensor``, default method and calibration images of the built-in train split): mIoU as emulated (the
  target's half-up rounding) and as onnxruntime simulates it, on held-out images (a val split generated with
  another seed: ``fcnquant synth-voc DIR --train 0 --val 1000 --seed 1``), the share of pixels whose class
  differs, the per-layer largest difference in LSBs, and the float model's mIoU on the same images;
- the full-size fcn8s (seeded random weights, 320 x 320, npu-pow2 per-tensor, min/max on 8 images): seconds per
  image of the emulator and of onnxruntime's int8 session, alternated on the same image, with the load average.

    python bench/bench_emulate.py --heldout /tmp/fq/val1k          # writes bench/results/emulate.json
    python bench/bench_emulate.py --skip-speed --rounding half_even   # the rows with onnxruntime's rounding

Rows are kept per (model, rounding, variant, images): a run replaces only its own. A variant diagnoses the
half-up rounding on ``--images`` images, by patching the emulator here (it is no option of fcnquant):
``--half-up-in conv,align`` rounds half up only in those op groups (``OP_GROUPS``) and half to even elsewhere.

numpy's BLAS runs one thread unless ``--blas-threads`` says otherwise (set before numpy loads): on a machine whose
cores are shared with other jobs, OpenBLAS threads waiting on each other made the demo r50's many small matrix
products 14x slower (5.2 s against 0.38 s per image with 2 threads against 1, load average 18 on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path



def _blas_threads_before_numpy() -> None:
    """Sets OPENBLAS_NUM_THREADS from ``--blas-threads`` (default 1; 0 leaves it) before anything loads numpy."""
    argv = sys.argv[1:]
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("--blas-threads=")), None)
    if value is None and "--blas-threads" in argv[:-1]:
        value = argv[argv.index("--blas-threads") + 1]
    if (value or "1") != "0":
        os.environ.setdefault("OPENBLAS_NUM_THREADS", value or "1")


_blas_threads_before_numpy()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_model, git_commit, interleaved_latency, load_average, results_header  # noqa: E402
import numpy as np  # noqa: E402

MODELS = ("fcn8s", "fcn16s", "fcn32s", "fcn_r50_d8")
RESULTS = Path(__file__).resolve().parent / "results" / "emulate.json"
TITLE = "Integer emulation against onnxruntime's simulation and the float model"
#: op groups of the per-op rounding diagnosis (``--half-up-in``): which steps' requantization rounds half up
OP_GROUPS = {"conv": ("Conv", "ConvTranspose"), "align": ("Add", "Concat"), "resize": ("Resize",),
             "other": ("MaxPool", "Relu", "Pad")}


def int8_model(name: str, workdir: Path) -> Path:
    """Returns the demo model ``name``'s npu-pow2 per-tensor int8 model (made once in ``workdir``)."""
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.workflows import Outputs, calibrate

    out = workdir / f"{name}.pow2.int8.onnx"
    if not out.is_file():
        calibrate(demo_model_path(name), DataConfig(split="train"), run=RunConfig(progress=False),
                  quant=QuantConfig(target="npu-pow2", per_channel=False), outputs=Outputs(model=out))
    return out


def float_miou(name: str, heldout: Path, images: int, cache: dict) -> float:
    """Returns the float demo model's mIoU on the first ``images`` held-out images (kept in ``cache``)."""
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    key = f"{name}/{images}"
    if key not in cache:
        res = evaluate(demo_model_path(name), DataConfig(root=heldout, split="val", num_images=images),
                       RunConfig(progress=False))
        cache[key] = round(float(res.miou), 4)
    return cache[key]


@contextmanager
def half_up_in(groups: tuple[str, ...]):
    """Within it, the steps of the op ``groups`` (OP_GROUPS) requantize half up, every other step half to even."""
    from fcnquant.emulate import interpret

    ops = {op for g in groups for op in OP_GROUPS[g]}
    original = interpret._requantize

    def patched(acc, acc_scale, s, a):
        return original(acc, acc_scale, s, replace(a, rounding="half_up" if s.op in ops else "half_even"))

    interpret._requantize = patched
    try:
        yield
    finally:
        interpret._requantize = original


def accuracy_row(name: str, heldout: Path, images: int, workdir: Path, rounding: str | None = None,
                 variant: str = "", floats: dict | None = None) -> dict:
    """Returns the emulated-vs-simulated row of one demo model on ``images`` held-out images (``rounding``: the
    target's own when None, else that rule instead: half_even isolates the differences that are not rounding;
    ``variant``: a label of the run's patched arithmetic, see ``half_up_in``)."""
    from fcnquant.data import DataConfig
    from fcnquant.emulate import arithmetic_of, emulate_eval
    from fcnquant.execute import RunConfig

    model = int8_model(name, workdir)
    arithmetic = arithmetic_of("npu-pow2")
    arithmetic = replace(arithmetic, rounding=rounding) if rounding else arithmetic
    load_start = load_average()[0]
    rep = emulate_eval(model, DataConfig(root=heldout, split="val", num_images=images), RunConfig(progress=False),
                       arithmetic=arithmetic)
    d = rep.to_dict()
    worst = sorted(d["layers"], key=lambda x: -x["max_lsb"])[:3]
    return {
        "model": name, "rounding": arithmetic.rounding, "variant": variant, "images": rep.images,
        "miou_float": float_miou(name, heldout, images, {} if floats is None else floats),
        "miou_emulated": d["miou_emulated"], "miou_onnxruntime": d["miou_simulated"], "miou_gap": d["miou_gap"],
        "class_agreement_percent": round(100 - rep.disagreement, 4),
        "layers_differing": sum(1 for x in d["layers"] if x["max_lsb"]), "layers": len(d["layers"]),
        "max_lsb": max((x["max_lsb"] for x in d["layers"]), default=0),
        "worst_layers": [(x["name"], x["op"], x["max_lsb"]) for x in worst],
        "accumulator_overflows": d["accumulator_overflows"], "arithmetic": d["arithmetic"],
        "seconds": d["seconds"], "load_start": load_start, "load_end": load_average()[0],
        "commit": git_commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def speed_row(workdir: Path, rounds: int) -> dict:
    """Returns seconds per image of the emulator and onnxruntime's int8 session on the full-size fcn8s."""
    import onnx

    from fcnquant.data import DataConfig
    from fcnquant.emulate import arithmetic_of, build_program, run_program
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.runtime import make_session
    from fcnquant.workflows import Outputs, calibrate

    fp32 = ensure_model(None, workdir, 320, "fcn8s")
    out = workdir / "fcn8s_full.pow2.int8.onnx"
    if not out.is_file():
        calibrate(fp32, DataConfig(split="train", num_images=8), run=RunConfig(progress=False),
                  quant=QuantConfig(method="minmax", target="npu-pow2", per_channel=False),
                  outputs=Outputs(model=out))
    x = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
    session = make_session(out)
    name = session.get_inputs()[0].name
    prog = build_program(onnx.load(str(out)))
    arithmetic = arithmetic_of("npu-pow2")
    load_start = load_average()
    t = time.perf_counter()
    times = interleaved_latency({"onnxruntime_int8": lambda: session.run(None, {name: x}),
                                 "emulator": lambda: run_program(prog, x, arithmetic, keep=False)},
                                rounds=rounds, warmup=1)
    return {"model": "fcn8s full width, 320x320, npu-pow2 per-tensor", "rounds": rounds,
            "onnxruntime_int8_s": times["onnxruntime_int8"], "emulator_s": times["emulator"],
            "ratio_median": times["emulator"]["median_s"] / times["onnxruntime_int8"]["median_s"],
            "wall_s": time.perf_counter() - t, "load_start": load_start, "load_end": load_average()}


def _signed(v: float | None, digits: int = 3) -> str | None:
    return None if v is None else f"{v:+.{digits}f}"


def _row_order(r: dict) -> tuple:
    """Sorts rows by model, images, then plain roundings, per-op roundings."""
    label = r.get("variant") or ""
    kind = 0 if not label else 1
    return (MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS), r["images"], kind,
            label.count("+"), r["rounding"] != "half_even", label)


def sections(data: dict) -> list[dict]:
    """Returns the results file's tables (bench/README.md) from its raw rows."""
    full = max((r["images"] for r in data["accuracy"]), default=0)
    main = [r for r in data["accuracy"] if not r.get("variant") and r["images"] == full]
    other = sorted((r for r in data["accuracy"] if r not in main), key=_row_order)

    def cells(r):
        f = r.get("miou_float")
        return [r["miou_emulated"], r["miou_onnxruntime"], _signed(r["miou_gap"]), f,
                _signed(None if f is None else r["miou_emulated"] - f, 2),
                _signed(None if f is None else r["miou_onnxruntime"] - f, 2), r["class_agreement_percent"]]

    head = ["mIoU emulated", "mIoU onnxruntime", "emulated - onnxruntime", "mIoU float", "emulated - float",
            "onnxruntime - float", "same class %"]
    out = [{"title": "Accuracy", "columns": ["model", "rounding", "images"] + head + ["max LSB", "s", "load"],
            "rows": [[r["model"], r["rounding"], r["images"]] + cells(r)
                     + [r["max_lsb"], r["seconds"], f"{r['load_start']:.1f} / {r['load_end']:.1f}"] for r in main],
            "align": "llr" + "r" * 10 + "l", "digits": 2}]
    if other:
        out.append({"title": "Where half-up rounding matters",
                    "text": "`half_up in X`: only the steps of X (conv: Conv, ConvTranspose; align: Add, Concat; "
                            "resize: Resize; other: MaxPool, Relu, Pad) round half up, the rest half to even.",
                    "columns": ["model", "arithmetic", "images"] + head,
                    "rows": [[r["model"], r.get("variant") or r["rounding"], r["images"]] + cells(r) for r in other],
                    "align": "llr" + "r" * 7, "digits": 2})
    sp = data.get("speed") or {}
    if sp:
        out.append({"title": "Speed", "text": f"{sp['model']}, {sp['rounds']} alternated rounds, one BLAS thread: "
                    f"onnxruntime int8 {sp['onnxruntime_int8_s']['median_s']:.2f} s per image, the emulator "
                    f"{sp['emulator_s']['median_s']:.2f} s (medians): {sp['ratio_median']:.2f}x; load "
                    f"{sp['load_start'][0]:.1f} at start."})
    return out


SUMMARY = ("Each demo model's npu-pow2 per-tensor int8 model on held-out synthetic val images (`fcnquant synth-voc "
           "DIR --train 0 --val 1000 --seed 1`): mIoU of the emulated integer arithmetic, of onnxruntime's QDQ "
           "simulation and of the float model on the same images, the share of pixels of the same class in the "
           "emulator and onnxruntime, the largest difference of any layer in LSBs. Rows carry the load of their "
           "own run (1-minute load average at start / end); rows measured at {runs}.")


def load_results(path: Path) -> dict:
    """Returns the raw data of an earlier results file (either format), or an empty one."""
    if not path.is_file():
        return {"accuracy": []}
    old = json.loads(path.read_text())
    if old.get("format_version", 1) >= 2:
        return old["data"]
    commit = old.get("machine", {}).get("commit")
    date = old.get("machine", {}).get("date_utc")
    for r in old.get("accuracy", []):
        r.setdefault("commit", commit)
        r.setdefault("date_utc", date)
    return {"heldout": old.get("heldout"), "accuracy": old.get("accuracy", []), "speed": old.get("speed"),
            "blas_threads": old.get("blas_threads")}


def write(path: Path, data: dict) -> None:
    """Writes the results file (format_version 2) with ``data`` as its raw rows."""
    res = results_header(TITLE, "python bench/bench_emulate.py --heldout DIR", order=60)
    runs: dict[str, list[str]] = {}
    for r in sorted(data["accuracy"], key=lambda r: str(r.get("date_utc"))):
        runs.setdefault(str(r.get("commit")), []).append(str(r.get("date_utc")))
    res["summary"] = SUMMARY.format(runs="; ".join(
        f"commit {c} {d[0]}" + (f" to {d[-1][11:]}" if d[-1] != d[0] else "") for c, d in runs.items()))
    res["sections"], res["data"] = sections(data), data
    path.parent.mkdir(parents=True, exist_ok=True)
    res["load_end"] = [round(v, 2) for v in load_average()]
    path.write_text(json.dumps(res, indent=1) + "\n")


def _upsert(data: dict, row: dict) -> None:
    key = (row["model"], row["rounding"], row.get("variant", ""), row["images"])
    data["accuracy"] = [r for r in data["accuracy"]
                        if (r["model"], r.get("rounding"), r.get("variant", ""), r["images"]) != key] + [row]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blas-threads", type=int, default=1, help="numpy BLAS threads (default %(default)s; 0: "
                   "OpenBLAS's choice); takes effect only when set before numpy loads, i.e. from the command line")
    p.add_argument("--heldout", type=Path, default=Path("/tmp/fq/val1k"))
    p.add_argument("--images", type=int, default=1000, help="held-out images per model (default %(default)s)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=5, help="alternated speed rounds (default %(default)s)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fcnquant-bench-emulate")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--rounding", help="emulate with this rounding instead of npu-pow2's (e.g. half_even)")
    p.add_argument("--half-up-in", metavar="GROUPS", help="diagnosis: only these op groups round half up, the rest "
                   f"half to even (comma list of {', '.join(OP_GROUPS)})")
    p.add_argument("--render", action="store_true", help="only rewrite the results file from its rows")
    args = p.parse_args(argv)
    data = load_results(args.out)
    floats = data.setdefault("float_miou", {})
    if not args.render:
        _run(args, data, floats)
    for r in data["accuracy"]:  # rows measured before the float column
        if r.get("miou_float") is None and not args.render:
            r["miou_float"] = float_miou(r["model"], args.heldout, r["images"], floats)
    write(args.out, data)
    return 0


def _run(args, data: dict, floats: dict) -> None:
    if not (args.heldout / "VOC2012").is_dir():
        from fcnquant.data import write_synthetic_voc

        write_synthetic_voc(args.heldout, train=0, val=1000, seed=1, progress=False)
    args.work.mkdir(parents=True, exist_ok=True)
    data.update(heldout=str(args.heldout), blas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "OpenBLAS's choice"))
    if not args.skip_speed:
        data["speed"] = speed_row(args.work, args.rounds)
        print(json.dumps(data["speed"]), file=sys.stderr, flush=True)
        write(args.out, data)
    for name in [m for m in args.models.split(",") if m]:
        if args.half_up_in:
            groups = tuple(g for g in args.half_up_in.split(",") if g)
            with half_up_in(groups):
                row = accuracy_row(name, args.heldout, args.images, args.work, "half_even",
                                   "half_up in " + "+".join(groups), floats)
        else:
            row = accuracy_row(name, args.heldout, args.images, args.work, args.rounding, "", floats)
        _upsert(data, row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        write(args.out, data)


if __name__ == "__main__":
    raise SystemExit(main())
