"""Benchmark: accuracy recovery (fcnquant --recover) beside plain emission and the peers, on every demo model.

For every demo model, targets ``ort-cpu`` (per-channel weights) and ``npu-pow2`` with per-tensor weights, and every
method (kl, minmax, percentile, mse), fcnquant's one-shot flow (``fcnquant.workflows.calibrate``, what
``fcnquant calibrate --out`` runs) emits the int8 model without and with ``recover=True`` from the 50 calibration
images ``calibrate --num-images 50`` picks on the built-in synthetic train split (seed 0); every model, and fp32, is
scored with ``fcnquant.evaluate`` on 1000 held-out images (a val split generated with seed 1; disjoint from the
calibration images). The time of each flow (collection + recovery + emission) is recorded. ``--adaround`` adds
kl + recover + AdaRound rows. The peers (onnxruntime, NNCF, AIMET-ONNX) come from ``bench_peers.run_peers`` on
the same calibration images and the same val split (``--peers``; it reuses the peer models it already made in
its work folder).

    .venv/bin/python bench/bench_recover.py [--models fcn8s ...] [--methods kl ...] [--work DIR] [--out F]
                                            [--peers] [--adaround] [--markdown BENCHMARKS-section.md]
                                            [--bias-forms] [--timing]

``--bias-forms`` adds, for kl at npu-pow2 with per-tensor weights, the rows of ``--recover`` with each bias
correction form (``recover+bc-fast``, the default, and ``recover+bc-sequential``, the layer-by-layer reference):
the held-out mIoU of both. ``--timing`` times whole ``fcnquant calibrate`` processes as a user runs them on the
full-size fcn8s at 320x320 (seeded random weights, ``_common.ensure_model``) and 32 synthetic images: kl,
npu-pow2, per-tensor, ``--out``, with and without ``--recover`` (and ``--recover --bias-correction sequential``
once), alternated, best of 2, with the load average; saved under ``"timing"``.

Results are saved after every configuration (``--out``, JSON) and a rerun skips configurations already there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

log = logging.getLogger("bench_recover")

METHODS = ("kl", "minmax", "percentile", "mse")
SETUPS = (("ort-cpu", True), ("npu-pow2", False))  # (target, per-channel weights)
NUM_CALIB, VAL_IMAGES, VAL_SEED = 50, 1000, 1


def load_avg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def val_split(work: Path) -> Path:
    """Returns the 1000-image seed-1 val split (generated once into ``work``)."""
    from fcnquant.data import write_synthetic_voc

    root = work / f"val{VAL_IMAGES}-seed{VAL_SEED}"
    if not (root / "VOC2012").is_dir():
        write_synthetic_voc(root, train=0, val=VAL_IMAGES, size=192, seed=VAL_SEED, progress=False)
    return root


def calibration_images(src: Path):
    """Returns (the dataset, the ids) ``fcnquant calibrate --num-images 50`` calibrates the demo model ``src`` on:
    its default data's train split (the built-in synthetic VOC), a seed-0 selection."""
    from fcnquant.data import DataConfig

    cfg = DataConfig(split="train", num_images=NUM_CALIB, seed=0)
    ds = cfg.open(src, progress=False)
    return ds, cfg.choose(ds, progress=False)


def flow(src: Path, ds, ids, out: Path, method: str, target: str, per_channel: bool, recover: bool, **switches):
    """Returns the FlowResult of fcnquant's one-shot flow (what ``fcnquant calibrate --out`` runs) emitting ``out``
    from the images ``ids`` of ``ds``; ``recover`` and the single-pass ``switches`` decide the plan as the CLI's
    ``--recover``/``--equalize``/... do (``fcnquant.recover.resolve_plan``)."""
    from fcnquant.data import DataConfig
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.recover import resolve_plan
    from fcnquant.workflows import Outputs, calibrate

    plan = resolve_plan(target, per_channel, recover, **switches)
    return calibrate(src, DataConfig(ds, ids=tuple(ids)), QuantConfig(method=method, target=target,
                     per_channel=per_channel), RunConfig(progress=False), plan, outputs=Outputs(model=out))


def evaluate_miou(model: Path, val: Path) -> float:
    """Returns the mIoU of ``model`` on the val split of ``val``."""
    from fcnquant.data import DataConfig
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    return evaluate(model, DataConfig(val, split="val"), RunConfig(progress=False)).miou


def key(row: dict) -> str:
    return "|".join(str(row[k]) for k in ("model", "tool", "target", "weights", "method", "recovery"))


def save_results(out: Path, **parts) -> None:
    """Writes ``parts`` (``rows``, ``timing``) into the results JSON, keeping what it holds already."""
    data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(format_version=1, **parts)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out)


def run(models, methods, work: Path, out: Path, adaround: bool, peers: bool, bias_forms: bool = False,
        configs_only: bool = False) -> list[dict]:
    from fcnquant.demo_models import demo_model_path

    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    done = {key(r) for r in rows}
    val = val_split(work)

    def save() -> None:
        save_results(out, rows=rows)

    calib, fp = {}, {}
    for model in models:
        src = demo_model_path(model)
        calib[model] = (src, *calibration_images(src))
        fp_row = {"model": model, "tool": "fp32", "target": "-", "weights": "-", "method": "-", "recovery": "-"}
        if key(fp_row) not in done:
            fp_row["miou"] = evaluate_miou(src, val)
            rows.append(fp_row)
            done.add(key(fp_row))
            save()
        fp[model] = next(r["miou"] for r in rows if key(r) == key(fp_row))
    # the default method first on every model, then the others; the no-equalization ablation of the strict setup
    configs = [] if configs_only else [(model, t, pc, m, rec, "") for m in methods for model in models
                                       for t, pc in SETUPS for rec in (False, True)]
    if not configs_only:
        configs += [(model, "npu-pow2", False, "kl", True, "no-equalize") for model in models]
    if adaround:
        configs += [(model, t, pc, "kl", True, "adaround") for model in models for t, pc in SETUPS]
    if bias_forms:
        configs += [(model, "npu-pow2", False, "kl", True, f"bc-{form}") for model in models
                    for form in ("fast", "sequential")]
    for model, target, per_channel, method, recover, variant in configs:
        src, ds, ids = calib[model]
        if True:
            row = {"model": model, "tool": "fcnquant", "target": target,
                   "weights": "per-channel" if per_channel else "per-tensor", "method": method,
                   "recovery": ("recover+" + variant if variant else "recover") if recover else "none"}
            if key(row) in done:
                continue
            q = work / f"{model}.{target}.{row['weights']}.{method}.{row['recovery']}.onnx"
            load0 = load_avg()
            t0 = time.perf_counter()
            try:
                res = flow(src, ds, ids, q, method, target, per_channel, recover,
                           adaround=(variant == "adaround") or None,
                           equalize=False if variant == "no-equalize" else None,
                           bias_correction_form=variant[3:] if variant.startswith("bc-") else None)
            except Exception as exc:  # a failing configuration is reported, not fatal
                log.exception("%s failed", key(row))
                row.update(error=f"{type(exc).__name__}: {exc}")
                rows.append(row)
                save()
                continue
            seconds = time.perf_counter() - t0
            miou = evaluate_miou(q, val)
            row.update(miou=miou, delta=miou - fp[model], seconds=seconds, passes=res.plan.names(),
                       recovery_detail=res.recovery, load=f"{load0} -> {load_avg()}")
            rows.append(row)
            done.add(key(row))
            save()
            log.info("%-11s %-8s %-11s %-10s %-16s %+.2f  (%.0f s)", model, target, row["weights"], method,
                     row["recovery"], miou - fp[model], seconds)
    if peers:
        from bench_peers import run_peers

        for r in run_peers(list(models), work / "peers"):
            row = {"model": r["model"], "tool": r.get("tool"), "target": r.get("setting", ""), "weights":
                   r.get("weights", ""), "method": r.get("setting", ""), "recovery": "peer"}
            if key(row) in done:
                continue
            row.update({k: r.get(k) for k in ("miou", "delta", "seconds", "error")})
            rows.append(row)
            save()
    return rows


def time_calibrate(work: Path, images: int = 32, reps: int = 2) -> dict:
    """Returns the whole-process wall times of ``fcnquant calibrate`` (kl, npu-pow2, per-tensor, ``--out``) on the
    full-size fcn8s at 320x320 over ``images`` synthetic images: without ``--recover``, with it (fast bias
    correction) alternated ``reps`` times, then once with ``--bias-correction sequential``; best of each."""
    import subprocess

    from _common import ensure_data, ensure_model

    model = ensure_model(None, work)
    data = ensure_data(work, images, val=1)
    base = [sys.executable, "-m", "fcnquant", "calibrate", str(model), "--data", str(data), "--num-images",
            str(images), "--method", "kl", "--target", "npu-pow2", "--per-tensor", "--no-progress", "--out"]
    variants = {"plain": [], "recover": ["--recover"], "recover, sequential": ["--recover", "--bias-correction",
                                                                              "sequential"]}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    order = [k for _ in range(reps) for k in ("plain", "recover")] + ["recover, sequential"]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    for name in order:
        out = work / f"timing.{name.replace(', ', '-')}.int8.onnx"
        load0 = load_avg()
        t0 = time.perf_counter()
        subprocess.run(base + [str(out)] + variants[name], check=True, env=env, cwd=work,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs[name].append({"wall": round(time.perf_counter() - t0, 2), "load": f"{load0} -> {load_avg()}"})
        log.info("calibrate %-20s %.1f s (load %s)", name, runs[name][-1]["wall"], runs[name][-1]["load"])
    best = {k: min(r["wall"] for r in v) for k, v in runs.items()}
    return {"model": f"fcn8s full width, 320x320 ({model.name})", "images": images, "runs": runs, "best": best,
            "ratio_recover": round(best["recover"] / best["plain"], 3),
            "ratio_recover_sequential": round(best["recover, sequential"] / best["plain"], 3)}


def markdown(rows: list[dict], models) -> str:
    """Returns the BENCHMARKS.md section: per model and setup, each method without / with recovery."""
    fp = {r["model"]: r["miou"] for r in rows if r["tool"] == "fp32"}
    lines = ["| model | fp32 | setup | " + " | ".join(f"{m} / +recover" for m in METHODS)
             + " | kl +recover, no CLE | kl +recover +AdaRound |",
             "| --- | ---: | --- | " + " | ".join("---:" for _ in METHODS) + " | ---: | ---: |"]
    for model in models:
        for target, pc in SETUPS:
            weights = "per-channel" if pc else "per-tensor"

            def cell(method, recovery, model=model, target=target, weights=weights):
                r = next((r for r in rows if r["model"] == model and r["tool"] == "fcnquant" and r["target"] == target
                          and r["weights"] == weights and r["method"] == method and r["recovery"] == recovery), None)
                if r is None:
                    return "n/a"
                return "error" if "error" in r else f"{r['delta']:+.2f}"

            cells = [f"{cell(m, 'none')} / {cell(m, 'recover')}" for m in METHODS]
            lines.append(f"| {model} | {fp.get(model, float('nan')):.2f} | {target}, {weights} | " + " | ".join(cells)
                         + f" | {cell('kl', 'recover+no-equalize')} | {cell('kl', 'recover+adaround')} |")
    return "\n".join(lines)


def bias_forms_markdown(rows: list[dict], models) -> str:
    """Returns the table of the held-out mIoU with the fast and the sequential bias correction."""
    lines = ["| model | fp32 | kl npu-pow2 per-tensor --recover, fast | sequential | fast - sequential | seconds "
             "fast / sequential |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in models:
        got = {r["recovery"]: r for r in rows if r["model"] == model and r["recovery"].startswith("recover+bc-")
               and "miou" in r}
        fast, seq = got.get("recover+bc-fast"), got.get("recover+bc-sequential")
        fp = next((r["miou"] for r in rows if r["model"] == model and r["tool"] == "fp32"), float("nan"))
        if fast and seq:
            lines.append(f"| {model} | {fp:.2f} | {fast['miou']:.2f} | {seq['miou']:.2f} | "
                         f"{fast['miou'] - seq['miou']:+.3f} | {fast['seconds']:.1f} / {seq['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    from fcnquant.demo_models import DEMO_MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--work", type=Path, default=Path("/tmp/fcnquant-bench-recover"))
    p.add_argument("--out", type=Path, default=None, help="results JSON (default WORK/recover.json)")
    p.add_argument("--adaround", action="store_true", help="add kl + recover + AdaRound rows (needs torch)")
    p.add_argument("--peers", action="store_true", help="add the peers' rows (bench_peers.run_peers)")
    p.add_argument("--markdown", type=Path, help="write the markdown table to this file")
    p.add_argument("--bias-forms", action="store_true", help="add kl npu-pow2 per-tensor --recover rows with the fast "
                   "and the sequential bias correction")
    p.add_argument("--only-bias-forms", action="store_true", help="run the --bias-forms rows only")
    p.add_argument("--timing", action="store_true", help="only time whole calibrate processes with/without "
                   "--recover (fcn8s full width at 320x320, made in --work)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("fcnquant", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work / "recover.json"
    if args.timing:  # the timing alone: it wants the machine to itself
        save_results(out, timing=time_calibrate(args.work))
        print(json.dumps(json.loads(out.read_text())["timing"]["best"]))
        return 0
    rows = run(args.models, args.methods, args.work, out, args.adaround, args.peers,
               args.bias_forms or args.only_bias_forms, args.only_bias_forms)
    table = markdown(rows, args.models) + "\n\n" + bias_forms_markdown(rows, args.models)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
