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

Rows are kept per (model, rounding, variant, images): a run replaces only its own. Two variants diagnose the
half-up rounding on ``--images`` images, by patching the emulator here (they are no options of fcnquant):
``--half-up-in conv,align`` rounds half up only in those op groups (``OP_GROUPS``) and half to even elsewhere;
``--bias-images N`` rounds half up everywhere with each Conv's int32 bias lowered by the mean shift half-up
rounding causes, measured on N calibration images: in the Conv's integer outputs and in those of the Add it alone
feeds (``--bias-at output``, ``output_bias``), in its outputs only (``conv-output``), or in its accumulator
(``accumulator``, ``rounding_bias``).

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
from functools import partial
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
from _common import (ensure_model, git_commit, interleaved_latency, load_average, load_images,  # noqa: E402
                     results_header)
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


def rounding_bias(model: Path, images: int, chunk: int = 8) -> dict[str, np.ndarray]:
    """Returns, per Conv / ConvTranspose step, the int32 bias change (accumulator units) that cancels the mean
    per-channel shift half-up rounding leaves in its accumulator against half-to-even rounding.

    Both roundings run side by side, step by step, over the first ``images`` calibration images (the built-in
    train split); a step's shift is measured with every earlier step already corrected, so one pass corrects
    every layer in dependency order. The accumulators are made ``chunk`` images at a time.
    """
    import onnx

    from fcnquant.data import DataConfig
    from fcnquant.emulate import arithmetic_of, build_program
    from fcnquant.emulate.interpret import _accumulate, _requantize, quantize_input
    from fcnquant.runtime import make_session

    prog = build_program(onnx.load(str(model)))
    cfg = DataConfig(split="train", num_images=images)
    dataset = cfg.open(model, progress=False)
    x = np.concatenate(load_images(dataset, cfg.preset_for(make_session(model)), cfg.take(dataset))[0])
    up, even = arithmetic_of("npu-pow2"), replace(arithmetic_of("npu-pow2"), rounding="half_even")
    vals = {a: {prog.input.name: quantize_input(x, prog.input)} for a in ("up", "even")}
    deltas: dict[str, np.ndarray] = {}
    spans = [(lo, min(lo + chunk, len(x))) for lo in range(0, len(x), chunk)]
    for s in prog.steps:
        acc = partial(_step_acc, _accumulate, s, vals, {"up": up, "even": even})
        conv, delta = s.op in OP_GROUPS["conv"], 0
        if conv:  # first the mean shift over all images, then the half-up outputs with it taken off
            diff = sum((acc("up", lo, hi)[0] - acc("even", lo, hi)[0]).sum(axis=(0, 2, 3)) for lo, hi in spans)
            size = acc("up", 0, 1)[0][0, 0].size
            delta = deltas[s.name] = np.rint(diff / (len(x) * size)).astype(np.int64).reshape(1, -1, 1, 1)
        if s.out is None:
            continue
        for which, a in (("up", up), ("even", even)):
            parts = []
            for lo, hi in spans:
                v, scale = acc(which, lo, hi)
                parts.append(_requantize(v - delta if which == "up" else v, scale, s, a))
            vals[which][s.output] = np.concatenate(parts)
    return {k: v.reshape(-1) for k, v in deltas.items()}


def _step_acc(accumulate, s, vals: dict, arithmetic: dict, which: str, lo: int, hi: int):
    """Returns (accumulator, scale) of step ``s`` on images lo:hi of the ``which`` rounding's tensors."""
    return accumulate(s, {t.name: vals[which][t.name][lo:hi] for t in s.inputs}, arithmetic[which])


def output_bias(model: Path, images: int, chunk: int = 8, rounds: int = 2, adds: bool = True) -> dict[str, np.ndarray]:
    """Returns, per Conv / ConvTranspose step, the int32 bias change (accumulator units) that cancels, per channel,
    the mean shift of the *integer outputs* half-up rounding causes against half-to-even rounding: the Conv's own
    output (after its fused Relu), and for an Add the shift of its output, taken off the Conv that feeds it alone
    (a residual branch's last Conv). Each shift in output LSBs becomes accumulator units through the scale ratio
    and the share of active outputs; ``rounds`` such steps per layer (``adds=False``: the Conv outputs alone).
    Same pass and images as ``rounding_bias``.
    """
    import onnx

    from fcnquant.data import DataConfig
    from fcnquant.emulate import arithmetic_of, build_program
    from fcnquant.emulate.interpret import _accumulate, _requantize, quantize_input
    from fcnquant.runtime import make_session

    prog = build_program(onnx.load(str(model)))
    cfg = DataConfig(split="train", num_images=images)
    dataset = cfg.open(model, progress=False)
    x = np.concatenate(load_images(dataset, cfg.preset_for(make_session(model)), cfg.take(dataset))[0])
    ar = {"up": arithmetic_of("npu-pow2"), "even": replace(arithmetic_of("npu-pow2"), rounding="half_even")}
    vals = {a: {prog.input.name: quantize_input(x, prog.input)} for a in ar}
    spans = [(lo, min(lo + chunk, len(x))) for lo in range(0, len(x), chunk)]
    deltas: dict[str, np.ndarray] = {}
    by_output = {s.output: s for s in prog.steps}
    readers: dict[str, int] = {}
    for s in prog.steps:
        for t in s.inputs:
            readers[t.name] = readers.get(t.name, 0) + 1

    def run(s, which):
        delta = deltas.get(s.name, 0) if which == "up" else 0
        parts = []
        for lo, hi in spans:
            v, scale = _accumulate(s, {t.name: vals[which][t.name][lo:hi] for t in s.inputs}, ar[which])
            d = np.reshape(delta, (1, -1, 1, 1))
            parts.append(v - d if s.out is None else _requantize(v - d, scale, s, ar[which]))
        vals[which][s.output] = np.concatenate(parts)
        return scale

    def shift(s, units):  # per-channel mean output shift (up - even), over the share of active outputs
        up = vals["up"][s.output].astype(np.float64)
        even = vals["even"][s.output].astype(np.float64)
        zp = s.out.zero_point if s.out is not None else 0
        active = np.maximum(((even - zp) != 0).mean(axis=(0, 2, 3)), 0.05) if s.relu else 1.0
        return np.rint((up - even).mean(axis=(0, 2, 3)) / active * units).astype(np.int64)

    for s in prog.steps:
        scale = run(s, "even")
        run(s, "up")
        if s.op in OP_GROUPS["conv"]:
            units = 1.0 if s.out is None else s.out.scale / np.broadcast_to(scale, (len(s.bias),))
            deltas[s.name] = np.zeros(len(s.bias), np.int64)
            for _ in range(rounds):
                deltas[s.name] = deltas[s.name] + shift(s, units)
                run(s, "up")
        elif s.op == "Add" and s.out is not None and adds:
            feeds = [by_output[t.name] for t in s.inputs if t.name in by_output
                     and by_output[t.name].op in OP_GROUPS["conv"] and readers[t.name] == 1]
            if feeds:
                conv = feeds[-1]
                acc_scale = conv.inputs[0].scale * np.broadcast_to(conv.weight_scale, (len(conv.bias),))
                for _ in range(rounds):
                    deltas[conv.name] = deltas[conv.name] + shift(s, s.out.scale / acc_scale)
                    run(conv, "up")
                    run(s, "up")
    return deltas


@contextmanager
def biases_lowered(deltas: dict[str, np.ndarray]):
    """Within it, every program the emulator builds has its steps' int32 biases lowered by ``deltas`` (step name
    -> one value per output channel), as if the model's bias initializers were."""
    from fcnquant.emulate import measure

    original = measure.build_program

    def patched(model):
        prog = original(model)
        for s in prog.steps:
            if s.name in deltas:
                s.bias = s.bias - deltas[s.name]
        return prog

    measure.build_program = patched
    try:
        yield
    finally:
        measure.build_program = original


def accuracy_row(name: str, heldout: Path, images: int, workdir: Path, rounding: str | None = None,
                 variant: str = "", floats: dict | None = None) -> dict:
    """Returns the emulated-vs-simulated row of one demo model on ``images`` held-out images (``rounding``: the
    target's own when None, else that rule instead: half_even isolates the differences that are not rounding;
    ``variant``: a label of the run's patched arithmetic, see ``half_up_in`` and ``biases_lowered``)."""
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
    """Sorts rows by model, images, then plain roundings, per-op roundings, bias variants."""
    label = r.get("variant") or ""
    kind = 0 if not label else 1 if label.startswith("half_up in") else 2
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
        out.append({"title": "Where half-up rounding matters, and a bias that offsets it",
                    "text": "`half_up in X`: only the steps of X (conv: Conv, ConvTranspose; align: Add, Concat; "
                            "resize: Resize; other: MaxPool, Relu, Pad) round half up, the rest half to even. "
                            "`half_up, bias -N accumulator`: half-up rounding everywhere, each Conv's int32 bias lowered per "
                            "channel by the mean shift half-up rounding leaves in its accumulator (before the "
                            "Relu) against half to even, measured on N calibration images; `... output`: the "
                            "shift of the Conv's integer outputs instead, and of each Add's outputs taken off the "
                            "Conv that feeds it (both rounded to one accumulator unit).",
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
    p.add_argument("--bias-images", type=int, default=0, metavar="N", help="half-up rounding with each Conv's "
                   "bias lowered by its mean half-up shift, measured on N calibration images")
    p.add_argument("--bias-at", choices=("accumulator", "output", "conv-output"), default="output",
                   help="with --bias-images: match each Conv's accumulator means, or its integer output means and "
                   "those of the Add it feeds (conv-output: not the Add's)")
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
        elif args.bias_images:
            model = int8_model(name, args.work)
            deltas = (rounding_bias(model, args.bias_images) if args.bias_at == "accumulator"
                      else output_bias(model, args.bias_images, adds=args.bias_at == "output"))
            with biases_lowered(deltas):
                row = accuracy_row(name, args.heldout, args.images, args.work, "half_up",
                                   f"half_up, bias -{args.bias_images} {args.bias_at}", floats)
            row["bias_change"] = {k: [int(np.abs(v).max()), float(np.abs(v).mean())] for k, v in deltas.items()}
        else:
            row = accuracy_row(name, args.heldout, args.images, args.work, args.rounding, "", floats)
        _upsert(data, row)
        print(json.dumps({k: v for k, v in row.items() if k != "bias_change"}), file=sys.stderr, flush=True)
        write(args.out, data)


if __name__ == "__main__":
    raise SystemExit(main())
