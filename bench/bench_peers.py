"""Benchmark: the peers' post-training quantization (onnxruntime, NNCF, AIMET-ONNX) on fcnquant's demo models.

For every demo model (``fcnquant.demo_models``) the 50 calibration images fcnquant's ``calibrate --num-images 50``
uses (``DataConfig(num_images=50, seed=0).choose`` on the train split of ``builtin_dataset()``), preprocessed with
the model's preset exactly as fcnquant's collection does (``preset_for_session`` + ``iter_batches``), are saved as
one ``.npy``; each peer setting quantizes the model from it in its own venv (``bench/peers/*_quantize.py``, one
subprocess at a time, with a timeout; a failure is recorded and reported, never fatal), and every model it writes,
and the fp32 model, is scored with ``fcnquant.evaluate.evaluate`` on a held-out val split generated with seed 1
(1000 images by default, ``fcnquant synth-voc DIR --train 0 --val 1000 --seed 1``; disjoint from the calibration
images, which come from the seed-0 train split).

    .venv/bin/python bench/bench_peers.py [--models fcn8s ...] [--only aimet] [--work DIR] [--out peers.json]

Peer venvs: ``bench/peers/setup.sh`` (default ``/work/venvs/{nncf,aimet}``; ``--venvs`` or
``$FCNQUANT_PEER_VENVS`` elsewhere). onnxruntime runs in this interpreter's venv. The work folder keeps the
calibration arrays, the val split, every quantized model with its run record (``.json``) and log (``.log``), and
each evaluation (``.eval.json``); a rerun reuses a model whose record matches the same calibration array and
peer command, and an evaluation of the same model file on the same split (``--fresh`` redoes everything).

From Python: ``sys.path.insert(0, "bench"); from bench_peers import run_peers; rows = run_peers(["fcn8s"], work)``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_facts, md_table  # noqa: E402  (shared bench helpers)

log = logging.getLogger("bench_peers")

FORMAT_VERSION = 1
NUM_CALIB = 50
CALIB_SEED = 0
VAL_IMAGES = 1000
VAL_SEED = 1
DEFAULT_VENVS = Path(os.environ.get("FCNQUANT_PEER_VENVS", "/work/venvs"))
DEFAULT_WORK = Path("/tmp/fcnquant-bench-peers")
PEERS = HERE / "peers"
TOOLS = ("onnxruntime", "nncf", "aimet")
# OpenMP threads of every peer subprocess. On this shared 2-core machine (load average ~10) torch's two OpenMP
# threads spin against each other and the other jobs: an AdaRound-sized conv step took 123 ms with 2 threads and
# 14 ms with 1 (measured at load 13), so AIMET's AdaRound ran ~10x slower than on an idle machine. One thread makes
# the peers' times reflect their algorithms; pass --peer-threads 0 for the libraries' own defaults.
PEER_THREADS = 1


@dataclass(frozen=True)
class PeerSetting:
    """One peer run: which tool, a short name, the runner script's extra arguments and its time limit."""

    tool: str
    name: str
    args: tuple[str, ...] = ()
    timeout_s: float = 1800.0
    models: tuple[str, ...] | None = None  # None: every model
    description: str = ""
    slow: bool = False  # run after every quick setting of every model

    @property
    def weights(self) -> str:
        """Returns ``per-tensor`` or ``per-channel``: the weight granularity of this setting."""
        return "per-tensor" if "--per-tensor" in self.args else "per-channel"

    @property
    def runner(self) -> Path:
        """Returns the runner script of this setting's tool."""
        return PEERS / {"onnxruntime": "ort_quantize.py", "nncf": "nncf_quantize.py", "aimet": "aimet_quantize.py"}[
            self.tool]

    def python(self, venvs: Path) -> str:
        """Returns the interpreter that runs this setting (a peer venv's python, or this one for onnxruntime)."""
        return sys.executable if self.tool == "onnxruntime" else str(venvs / self.tool / "bin" / "python")


#: every setting the benchmark runs, in report order
SETTINGS: tuple[PeerSetting, ...] = (
    PeerSetting("onnxruntime", "minmax-pc", (), 900, description="quantize_static MinMax, per-channel weights"),
    PeerSetting("onnxruntime", "minmax-pt", ("--per-tensor",), 900,
                description="quantize_static MinMax, per-tensor weights"),
    PeerSetting("nncf", "default-pc", (), 900, description="nncf.quantize defaults (fast bias correction), "
                                                            "per-channel"),
    PeerSetting("nncf", "default-pt", ("--per-tensor",), 900,
                description="nncf.quantize defaults, per-tensor weights"),
    PeerSetting("nncf", "bc-pc", ("--no-fast-bias-correction",), 1800,
                description="fast_bias_correction=False (layer-wise BiasCorrection), per-channel"),
    PeerSetting("aimet", "minmax-pc", (), 900, description="QuantSim default config (per-channel), min_max"),
    PeerSetting("aimet", "tfe-pc", ("--scheme", "tf_enhanced"), 900,
                description="QuantSim default config (per-channel), tf_enhanced"),
    PeerSetting("aimet", "cle-pc", ("--cle",), 900, description="CLE, then QuantSim per-channel min_max"),
    PeerSetting("aimet", "ada1k-pc", ("--adaround", "1000"), 1800,
                description="AdaRound 1000 iterations, QuantSim per-channel min_max", slow=True),
    PeerSetting("aimet", "minmax-pt", ("--per-tensor",), 900, description="QuantSim per-tensor config, min_max"),
    PeerSetting("aimet", "tfe-pt", ("--per-tensor", "--scheme", "tf_enhanced"), 900,
                description="QuantSim per-tensor config, tf_enhanced"),
    PeerSetting("aimet", "cle-pt", ("--per-tensor", "--cle"), 900, description="CLE, then QuantSim per-tensor min_max"),
    PeerSetting("aimet", "ada1k-pt", ("--per-tensor", "--adaround", "1000"), 1800,
                description="AdaRound 1000 iterations, QuantSim per-tensor min_max", slow=True),
    PeerSetting("aimet", "ada10k-pc", ("--adaround", "10000"), 900, models=("fcn8s",),
                description="AdaRound at AIMET's default 10000 iterations, per-channel (fcn8s only, 15 min limit)",
                slow=True),
)


def settings_for(model: str, only: Sequence[str] | None = None, names: Sequence[str] | None = None
                 ) -> list[PeerSetting]:
    """Returns the settings to run on ``model``: those of the tools in ``only`` (default all), named in ``names``."""
    out = []
    for s in SETTINGS:
        if only and s.tool not in only:
            continue
        if names and s.name not in names and f"{s.tool}:{s.name}" not in names:
            continue
        if s.models is not None and model not in s.models:
            continue
        out.append(s)
    return out


# --- data --------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def calibration_array(model: str, work: Path) -> tuple[Path, dict]:
    """Returns the ``.npy`` of ``model``'s 50 calibration inputs (made in ``work/calib``) and how it was made.

    The ids are ``fcnquant calibrate --num-images 50``'s (``DataConfig.choose`` on the built-in train split, seed 0);
    each image goes through the model's preset as ``fcnquant.calibrate.collect_stats`` feeds it.
    """
    from fcnquant.data import DataConfig, builtin_dataset, iter_batches, open_dataset, preset_for_session
    from fcnquant.demo_models import demo_model_path
    from fcnquant.runtime import make_session

    dataset = open_dataset(builtin_dataset(progress=False), "train")
    ids = DataConfig(num_images=NUM_CALIB, seed=CALIB_SEED).choose(dataset, progress=False)
    preset = preset_for_session(make_session(str(demo_model_path(model))), None)
    x = np.concatenate([b.images for b in iter_batches(dataset, preset, ids, 1, with_masks=False)])
    folder = work / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}_{NUM_CALIB}_seed{CALIB_SEED}.npy"
    if not path.is_file() or not np.array_equal(np.load(path, allow_pickle=False), x):
        tmp = path.with_name(f".{path.name}.tmp.npy")
        np.save(tmp, x)
        os.replace(tmp, path)
    info = {"path": str(path), "sha256": _sha256(path), "shape": list(x.shape), "ids": ids,
            "preset": preset.to_dict(), "dataset": str(dataset.root), "split": "train"}
    return path, info


def val_split(work: Path, images: int = VAL_IMAGES, seed: int = VAL_SEED) -> Path:
    """Returns the root of the held-out val split in ``work`` (``fcnquant synth-voc --train 0 --val N --seed S``)."""
    root = work / f"val{images}_seed{seed}"
    if not (root / "VOC2012" / "synth.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        log.info("generating %d val images with seed %d into %s", images, seed, root)
        subprocess.run([sys.executable, "-m", "fcnquant", "synth-voc", str(root), "--train", "0", "--val",
                        str(images), "--seed", str(seed), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return root


# --- runs --------------------------------------------------------------------------------------------------------
@dataclass
class PeerRun:
    """What one peer subprocess produced: its model (or None), its record, and why it failed."""

    ok: bool
    model: Path | None
    record: dict = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None
    cached: bool = False
    log: Path | None = None


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or ln.startswith("RuntimeError") or "error" in ln.lower():
            return ln[:500]
    return lines[-1][:500] if lines else "no output"


def run_setting(setting: PeerSetting, model: str, model_path: Path, calib: Path, calib_sha: str, work: Path,
                venvs: Path, fresh: bool = False, threads: int = PEER_THREADS, run: bool = True,
                retry_failed: bool = False) -> PeerRun:
    """Returns the PeerRun of ``setting`` quantizing ``model_path`` from ``calib`` (reused when already made).

    ``threads`` > 0 sets OMP/MKL/OpenBLAS threads of the subprocess (torch in AIMET, numpy's BLAS); 0 leaves them.
    ``run=False`` only looks in the work folder: a setting not made yet is reported as not run. A failure (crash,
    timeout) is kept in the work folder too and reported again without rerunning, unless ``retry_failed``.
    """
    folder = work / "models" / model
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{setting.tool}-{setting.name}"
    out, rec_path, log_path = folder / f"{stem}.onnx", folder / f"{stem}.json", folder / f"{stem}.log"
    python = setting.python(venvs)
    cmd = [python, str(setting.runner), str(model_path), str(calib), str(out), "--json", str(rec_path),
           *setting.args]
    # what makes a result reusable; no paths, so a copied work folder is reused too
    key = {"runner": setting.runner.name, "args": list(setting.args), "calib_sha256": calib_sha,
           "model_sha256": _sha256(model_path), "threads": threads}
    rec = _read_json(rec_path) if not fresh else None
    if rec and rec.get("bench_key") == key:
        if rec.get("ok") and out.is_file():
            return PeerRun(True, out, rec, rec.get("bench_wall_s", 0.0), cached=True, log=log_path)
        if rec.get("bench_error") and not retry_failed:
            return PeerRun(False, None, rec, rec.get("bench_wall_s", 0.0), error=rec["bench_error"], cached=True,
                           log=log_path)
    if not run:
        return PeerRun(False, None, error="not run (no result in the work folder)")
    if not Path(python).is_file():
        return PeerRun(False, None, error=f"no interpreter {python} (run bench/peers/setup.sh)")
    for p in (out, rec_path):
        p.unlink(missing_ok=True)
    log.info("%s %s: %s", model, stem, " ".join(cmd))
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads > 0:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=setting.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the runner and any worker it started
            proc.wait()
            rc, timed_out = proc.returncode, True
    wall = time.perf_counter() - t0
    rec = _read_json(rec_path) or {}
    if timed_out:
        err = f"timeout after {setting.timeout_s:.0f} s"
    elif rc != 0 or not rec.get("ok") or not out.is_file():
        err = rec.get("error") or f"exit status {rc}: {_last_error_line(log_path.read_text(errors='replace'))}"
    else:
        err = None
    if not rec:  # killed at the timeout, or died before writing its record
        rec = {"format_version": FORMAT_VERSION, "tool": setting.tool, "setting": setting.name, "ok": False}
    rec.update(bench_key=key, bench_wall_s=wall, bench_load=[load0, os.getloadavg()[0]], bench_error=err)
    _write_json(rec_path, rec)
    if err:
        return PeerRun(False, None, rec, wall, error=err, log=log_path)
    return PeerRun(True, out, rec, wall, log=log_path)


def evaluate_cached(model_path: Path, val_root: Path, preset: str, cache: Path, fresh: bool = False) -> dict:
    """Returns fcnquant's evaluation of ``model_path`` on ``val_root``'s val split (kept in ``cache``, a JSON)."""
    from fcnquant.data import DataConfig
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    sha = _sha256(model_path)
    prev = _read_json(cache) if not fresh else None
    if prev and prev.get("model_sha256") == sha and Path(prev.get("val", "")).name == val_root.name:
        return prev
    r = evaluate(str(model_path), DataConfig(val_root, split="val", preset=preset), RunConfig(progress=False))
    res = {"model_sha256": sha, "val": str(val_root), "miou": r.miou, "pixel_acc": r.pixel_acc, "images": r.images,
           "eval_s": r.seconds, "images_per_s": r.images_per_s}
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_json(cache, res)
    return res


def run_peers(
    models: Sequence[str] | None,
    work_dir: str | os.PathLike[str] = DEFAULT_WORK,
    *,
    only: Sequence[str] | None = None,
    settings: Sequence[str] | None = None,
    venvs: str | os.PathLike[str] = DEFAULT_VENVS,
    val_images: int = VAL_IMAGES,
    fresh: bool = False,
    skip_slow: bool = False,
    threads: int = PEER_THREADS,
    on_row: Callable[[list[dict]], None] | None = None,
    run_missing: bool = True,
    retry_failed: bool = False,
) -> list[dict]:
    """Returns one row per (model, tool, setting), fp32 included: mIoU, delta vs fp32, seconds, error.

    ``models``: demo model names (None: all four); ``only``: tool names (``onnxruntime``, ``nncf``, ``aimet``);
    ``settings``: setting names (``default-pc`` or ``nncf:default-pc``); ``skip_slow`` leaves out AdaRound;
    ``on_row(rows)`` is called after each peer run with the rows so far (e.g. to save partial results);
    ``run_missing=False`` runs no peer, reporting only what the work folder holds; ``retry_failed`` reruns the
    settings that failed before. Runs one peer at a time, the quick settings on every model before the slow ones;
    see the module docstring for the work folder. Row keys: model, tool, setting, description, miou, delta,
    seconds (the peer's own time for loading the model, calibrating and writing the QDQ model), wall_s (the whole
    subprocess), eval_images, ok, error, cached, quantized_model, log, weights (per-channel / per-tensor), load_average.
    """
    from fcnquant.demo_models import DEMO_MODELS, demo_model_info

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    venvs = Path(venvs)
    val_root = val_split(work, val_images)
    rows: list[dict] = []
    prepared = {}
    for model in models or DEMO_MODELS:
        info = demo_model_info(model)
        calib, calib_info = calibration_array(model, work)
        (work / "calib" / f"{model}_{NUM_CALIB}_seed{CALIB_SEED}.json").write_text(json.dumps(calib_info, indent=2))
        fp32 = evaluate_cached(info.path, val_root, info.preset, work / "models" / model / "fp32.eval.json", fresh)
        base = {"model": model, "calib_images": calib_info["shape"][0], "calib_sha256": calib_info["sha256"]}
        prepared[model] = (info, calib, calib_info, fp32, base)
        rows.append({**base, "tool": "fp32", "setting": "-", "description": "float model", "weights": "",
                     "miou": fp32["miou"],
                     "delta": 0.0, "seconds": None, "wall_s": None, "eval_images": fp32["images"], "ok": True,
                     "error": None, "cached": False, "quantized_model": str(info.path), "log": None})
        log.info("%s fp32: %.2f mIoU on %d images", model, fp32["miou"], fp32["images"])
    # the quick settings on every model first, then the slow ones (AdaRound) setting by setting
    jobs = [(m, s) for m in prepared for s in settings_for(m, only, settings) if not s.slow]
    jobs += [(m, s) for s in SETTINGS if s.slow and not skip_slow for m in prepared
             if s in settings_for(m, only, settings)]
    for model, s in jobs:
        info, calib, calib_info, fp32, base = prepared[model]
        run = run_setting(s, model, info.path, calib, calib_info["sha256"], work, venvs, fresh, threads,
                          run_missing, retry_failed)
        row = {**base, "tool": s.tool, "setting": s.name, "description": s.description, "weights": s.weights,
               "miou": None,
               "delta": None, "seconds": run.record.get("seconds"), "wall_s": run.wall_s, "eval_images": None,
               "ok": run.ok, "error": run.error, "cached": run.cached,
               "quantized_model": str(run.model) if run.model else None,
               "log": str(run.log) if run.log else None, "load_average": run.record.get("bench_load")}
        if run.ok:
            try:
                ev = evaluate_cached(run.model, val_root, info.preset, run.model.with_suffix(".eval.json"), fresh)
                row.update(miou=ev["miou"], delta=ev["miou"] - fp32["miou"], eval_images=ev["images"])
            except Exception as exc:  # an unloadable or broken model is a result, not the end of the run
                row.update(ok=False, error=f"evaluation failed: {type(exc).__name__}: {exc}")
        rows.append(row)
        if row["ok"]:
            log.info("%s %s %s: %.2f mIoU (%+.2f), %.1f s%s", model, s.tool, s.name, row["miou"], row["delta"],
                     row["seconds"] or float("nan"), " (cached)" if run.cached else "")
        elif not run_missing and not run.cached and (run.error or "").startswith("not run"):
            log.info("%s %s %s: not run", model, s.tool, s.name)
        else:
            log.warning("%s %s %s failed: %s", model, s.tool, s.name, row["error"])
        if on_row is not None:
            on_row(list(rows))
    order = {(s.tool, s.name): i for i, s in enumerate(SETTINGS)}
    model_order = {m: (DEMO_MODELS.index(m) if m in DEMO_MODELS else len(DEMO_MODELS), i)
                   for i, m in enumerate(prepared)}
    rows.sort(key=lambda r: (model_order[r["model"]], order.get((r["tool"], r["setting"]), -1)))
    return rows


# --- reporting ---------------------------------------------------------------------------------------------------
def markdown(rows: Sequence[dict]) -> str:
    """Returns a Markdown table: one line per tool/setting, per model its mIoU delta vs fp32 and seconds."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["tool"], r["setting"]) for r in rows))
    by = {(r["model"], r["tool"], r["setting"]): r for r in rows}
    lines = []
    for tool, setting in keys:
        desc = next(r["description"] for r in rows if (r["tool"], r["setting"]) == (tool, setting))
        cells = []
        for m in models:
            r = by.get((m, tool, setting))
            if r is None:
                cells.append("")
            elif tool == "fp32":
                cells.append(f"{r['miou']:.2f}")
            elif not r["ok"]:
                err = r["error"] or ""
                cells.append("timeout" if err.startswith("timeout") else "not run" if err.startswith("not run")
                             else "crash")
            else:
                cells.append(f"{r['delta']:+.2f} ({r['seconds']:.0f} s)")
        lines.append([tool if tool != "fp32" else "fp32 (mIoU)", setting, desc, *cells])
    table = md_table(["tool", "setting", "what", *models], lines, "lll" + "r" * len(models))
    errors = [f"- {r['model']} {r['tool']} {r['setting']}: {r['error']}" for r in rows
              if not r["ok"] and not (r["error"] or "").startswith("not run")]
    return table + ("\n\nFailures:\n" + "\n".join(errors) if errors else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", help="demo models (default: fcn8s fcn16s fcn32s fcn_r50_d8)")
    p.add_argument("--only", nargs="+", choices=TOOLS, help="run only these tools")
    p.add_argument("--settings", nargs="+", help="run only these settings (e.g. default-pc or nncf:default-pc)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help=f"work folder (default {DEFAULT_WORK})")
    p.add_argument("--venvs", default=str(DEFAULT_VENVS), help=f"peer venv folder (default {DEFAULT_VENVS})")
    p.add_argument("--val-images", type=int, default=VAL_IMAGES, help="held-out val images, seed 1 (default 1000)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table")
    p.add_argument("--no-run", action="store_true",
                   help="run no peer: report what the work folder holds (settings not made show as not run)")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun the settings whose earlier run crashed or timed out (default: report them again)")
    p.add_argument("--fresh", action="store_true", help="rerun every peer and evaluation (ignore the work folder)")
    p.add_argument("--peer-threads", type=int, default=PEER_THREADS,
                   help=f"OMP/MKL/OpenBLAS threads of each peer process (default {PEER_THREADS}; 0: library default)")
    p.add_argument("--no-slow", action="store_true", help="leave out the slow settings (AdaRound)")
    p.add_argument("--list", action="store_true", help="list the settings and exit")
    p.add_argument("--table", metavar="JSON", help="print the Markdown table of a results JSON and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fcnquant").setLevel(logging.WARNING)
    if args.table:
        doc = json.loads(Path(args.table).read_text())
        print(markdown(doc["results"]))
        la = doc["machine"]["load_average"][0], doc["load_average_end"][0]
        print(f"\nmIoU delta vs fp32 on {doc['val']['images']} val images (seed {doc['val']['seed']}); load average "
              f"{la[0]:.2f} at start, {la[1]:.2f} at end; {doc['total_s'] / 60:.1f} min"
              + ("" if doc.get("complete") else " (partial results)"))
        return 0
    if args.list:
        for s in SETTINGS:
            print(f"{s.tool:12} {s.name:10} {s.description}" + (f" [{', '.join(s.models)}]" if s.models else "")
                  + (" (slow)" if s.slow else ""))
        return 0
    facts_start = machine_facts()
    t0 = time.perf_counter()

    def document(rows: list[dict], done: bool) -> dict:
        return {"format_version": FORMAT_VERSION, "complete": done, "machine": facts_start,
                "load_average_end": os.getloadavg(), "total_s": time.perf_counter() - t0,
                "calibration": {"images": NUM_CALIB, "seed": CALIB_SEED, "split": "builtin train"},
                "val": {"images": args.val_images, "seed": VAL_SEED}, "peer_threads": args.peer_threads,
                "results": rows}

    def save(rows: list[dict], done: bool = False) -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            _write_json(Path(args.out), document(rows, done))

    rows = run_peers(args.models, args.work, only=args.only, settings=args.settings, venvs=args.venvs,
                     val_images=args.val_images, fresh=args.fresh, skip_slow=args.no_slow,
                     threads=args.peer_threads, on_row=save, run_missing=not args.no_run,
                     retry_failed=args.retry_failed)
    save(rows, True)
    result = document(rows, True)
    if args.markdown or not args.out:
        print(markdown(rows))
        print(f"\nmIoU delta vs fp32 on {args.val_images} val images (seed {VAL_SEED}); calibration: {NUM_CALIB} "
              f"built-in train images (seed {CALIB_SEED}); load average {facts_start['load_average'][0]:.2f} at start,"
              f" {result['load_average_end'][0]:.2f} at end; {result['total_s'] / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
