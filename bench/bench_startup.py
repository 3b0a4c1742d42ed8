"""Start-up of a fcnquant command: whole processes, timed from spawn to exit, alternated round by round.

Measures, for the shipped demo fcn8s and one image of the built-in synthetic VOC:

* ``import fcnquant.cli`` alone, and with the parser built (every subcommand registered, as each command does);
* ``fcnquant eval MODEL --num-images 1`` (start-up + one image);
* a plain onnxruntime script doing the same one image (import onnxruntime, numpy and PIL, open the session, read,
  resize and normalise the image, run it): what any tool pays for one image.

and prints each command's median and min, the eval / plain-script ratio and the machine's load (load averages before
and after, CPU count): start-up times move with the load. Rounds alternate the commands so drift in the load hits
every command alike. Usage: ``python bench/bench_startup.py [--rounds N]``. Writes bench/results/startup.json
(``--out DIR`` elsewhere, ``--out none`` nothing); ``python bench/report.py`` then rebuilds BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PLAIN = """
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

model, image = sys.argv[1], sys.argv[2]
opts = ort.SessionOptions()
opts.log_severity_level = 3
session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
h, w = inp.shape[2], inp.shape[3]
x = np.asarray(Image.open(image).convert("RGB").resize((w, h), Image.BILINEAR), np.float32) / 255.0
x = ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
pred = session.run(None, {inp.name: x})[0].argmax(1)
print(pred.shape)
"""


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds


def _commands(py: str, script: Path) -> dict[str, list[str]]:
    from fcnquant.data import builtin_dataset
    from fcnquant.demo_models import demo_model_path

    model = str(demo_model_path("fcn8s"))
    voc = builtin_dataset(progress=False) / "VOC2012"  # generated once and cached, so no run pays for it
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    image = str(voc / "JPEGImages" / f"{ids[0]}.jpg")
    return {
        "import fcnquant.cli": [py, "-c", "import fcnquant.cli"],
        "import + build_parser": [py, "-c", "import fcnquant.cli as c; c.build_parser()"],
        "fcnquant eval (1 image)": [py, "-m", "fcnquant", "eval", model, "--data", str(voc), "--num-images", "1",
                                    "--no-progress"],
        "plain onnxruntime (1 image)": [py, str(script), model, image],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every command (default %(default)s)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to time (default: this one)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results; 'none': write nothing)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import results_header, write_results

    res = results_header("Start-up of a command", "python bench/bench_startup.py", order=45)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="fcnquant-startup-") as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)
        commands = _commands(args.python, script)
        for cmd in commands.values():  # warm-up: the file cache
            _timed(cmd, env)
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(_timed(cmd, env))
        load_after = os.getloadavg()
    import ml_dtypes

    print(f"{args.rounds} rounds, {os.cpu_count()} CPUs, load average (1, 5, 15 min) before "
          f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)}; "
          f"ml_dtypes {ml_dtypes.__version__}")
    print(f"{'command':<30}{'median s':>10}{'min s':>10}")
    for name, ts in times.items():
        print(f"{name:<30}{statistics.median(ts):>10.3f}{min(ts):>10.3f}")
    ev, plain = (statistics.median(times[k]) for k in ("fcnquant eval (1 image)", "plain onnxruntime (1 image)"))
    imp = statistics.median(times["import + build_parser"])
    print(f"eval / plain onnxruntime: {ev / plain:.2f}x; parser start-up / plain onnxruntime: {imp / plain:.2f}x")
    res["summary"] = (f"Whole processes, spawn to exit, {args.rounds} rounds alternating the commands after a warm-up; "
                      f"the shipped demo fcn8s and one image of the built-in synthetic VOC; ml_dtypes "
                      f"{ml_dtypes.__version__}.")
    res["sections"] = [{"columns": ["command", "median s", "min s"],
                        "rows": [[f"`{name}`", statistics.median(ts), min(ts)] for name, ts in times.items()],
                        "align": "lrr", "digits": 3,
                        "notes": f"eval / plain onnxruntime: {ev / plain:.2f}x (+{ev - plain:.2f} s); parser "
                                 f"start-up / plain onnxruntime: {imp / plain:.2f}x."}]
    res["data"] = {"times": times, "load_before": load_before, "load_after": load_after}
    if args.out != "none":
        print(f"wrote {write_results('startup', res, Path(args.out) if args.out else None)}")


if __name__ == "__main__":
    main()
