"""The integer emulator against onnxruntime's QDQ simulation: accuracy on every demo model, speed on the full fcn8s.

One run, side by side:

- per demo model, its npu-pow2 int8 model with per-tensor weights (``fcnquant calibrate --target npu-pow2
  --per-tensor``, default method and calibration images of the built-in train split): mIoU as emulated (the
  target's half-up rounding) and as onnxruntime simulates it, on held-out images (a val split generated with
  another seed: ``fcnquant synth-voc DIR --train 0 --val 1000 --seed 1``), the share of pixels whose class
  differs, and the per-layer largest difference in LSBs;
- the full-size fcn8s (seeded random weights, 320 x 320, npu-pow2 per-tensor, min/max on 8 images): seconds per
  image of the emulator and of onnxruntime's int8 session, alternated on the same image, with the load average.

    python bench/bench_emulate.py --heldout /tmp/fq/val1k          # writes bench/results/emulate.json

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
from _common import ensure_model, interleaved_latency, load_average, machine_facts  # noqa: E402

MODELS = ("fcn8s", "fcn16s", "fcn32s", "fcn_r50_d8")
RESULTS = Path(__file__).resolve().parent / "results" / "emulate.json"


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


def accuracy_row(name: str, heldout: Path, images: int, workdir: Path, rounding: str | None = None) -> dict:
    """Returns the emulated-vs-simulated row of one demo model on ``images`` held-out images (``rounding``: the
    target's own when None, else that rule instead: half_even isolates the differences that are not rounding)."""
    from dataclasses import replace

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
        "model": name, "rounding": arithmetic.rounding, "images": rep.images, "miou_emulated": d["miou_emulated"],
        "miou_onnxruntime": d["miou_simulated"], "miou_gap": d["miou_gap"],
        "class_agreement_percent": round(100 - rep.disagreement, 4),
        "layers_differing": sum(1 for x in d["layers"] if x["max_lsb"]), "layers": len(d["layers"]),
        "max_lsb": max((x["max_lsb"] for x in d["layers"]), default=0),
        "worst_layers": [(x["name"], x["op"], x["max_lsb"]) for x in worst],
        "accumulator_overflows": d["accumulator_overflows"], "arithmetic": d["arithmetic"],
        "seconds": d["seconds"], "load_start": load_start, "load_end": load_average()[0],
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
    import numpy as np

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
    args = p.parse_args(argv)
    if not (args.heldout / "VOC2012").is_dir():
        from fcnquant.data import write_synthetic_voc

        write_synthetic_voc(args.heldout, train=0, val=1000, seed=1, progress=False)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"format_version": 1, "machine": machine_facts(), "heldout": str(args.heldout), "accuracy": [],
              "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "OpenBLAS's choice")}
    if args.out.is_file():
        result = {**json.loads(args.out.read_text()), "machine": result["machine"],
                  "blas_threads": result["blas_threads"]}
    if not args.skip_speed:
        result["speed"] = speed_row(args.work, args.rounds)
        print(json.dumps(result["speed"]), file=sys.stderr, flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in [m for m in args.models.split(",") if m]:
        row = accuracy_row(name, args.heldout, args.images, args.work, args.rounding)
        result["accuracy"] = [r for r in result.get("accuracy", [])
                              if (r["model"], r.get("rounding")) != (name, row["rounding"])] + [row]
        print(json.dumps(row), file=sys.stderr, flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
