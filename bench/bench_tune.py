"""``fcnquant tune`` on every demo model at npu-pow2 + per-tensor, against a greedy one-layer-at-a-time search.

One run, side by side, per demo model (``--max-drop 0.05`` mIoU points on 200 tuning images of the built-in
train split, 50 other train images for calibration):

- fcnquant tune (ranking ``sensitivity``; ``--isolated MODEL`` adds a row ranked by isolated drift): evaluations
  of the tuning set against ceil(log2 L) + 3, layers left in float, tuning drop;
- the drop of the tuned model and of the all-int8 model on >= 1000 held-out images (``--heldout``: a val split
  generated with another seed, e.g. ``fcnquant synth-voc /tmp/fq/val1k --train 0 --val 1000 --seed 1``);
- greedy: from all int8, repeatedly the single layer whose move to float lowers the tuning drop most, on the
  same tuning set with the same builder. Greedy runs at most k - 1 steps (k = tune's float layers): enough to
  tell whether it needs fewer layers than tune (with k <= 1 nothing needs running: all-int8 misses the budget).

    python bench/bench_tune.py --heldout /tmp/fq/val1k --out /tmp/fq/bench-tune     # prints a Markdown section

``--int16``: the integer-only runs instead. Per demo model, ``tune --max-drop 0.05 --fallback int16`` without and
with ``--recover`` (agreement objective, the labelled drop verified at the end): the held-out drop, the compute
ops left in float (Conv/Add/Concat/MaxPool/Resize not fed by DequantizeLinear, the final logits aside), the
evaluations against ceil(log2 L) + 3; rows go to bench/results/tune_int16.json as they finish.

    python bench/bench_tune.py --int16 --heldout /tmp/fq/val1k --out /tmp/fq/bench-tune16
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("fcn8s", "fcn16s", "fcn32s", "fcn_r50_d8")
MAX_DROP = 0.05
TARGET = "npu-pow2"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_one(name: str, heldout: Path, out_dir: Path, rank: str, greedy_ref: bool, num_tune: int = 200,
            max_evaluations: int | None = None, recover: bool = False) -> dict:
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.data import DataConfig, builtin_dataset, open_dataset, preset_for_session
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.runtime import make_session
    from fcnquant.tune import ImageChoice, QuantizeBuilder, TuneOptions, choose_images, find_layers, greedy, tune
    from fcnquant.tune.builder import RecoveryBuilder
    from fcnquant.tune.layers import excluded_nodes
    from fcnquant.tune.tuning_set import TuningSet
    from fcnquant._io import load_onnx

    model = demo_model_path(name)
    row: dict = {"model": name, "rank": rank, "num_tune": num_tune, "recover": recover, "load_start": loadavg()}
    t0 = time.perf_counter()
    tag = f"{name}.{rank}.{num_tune}" + (".recover" if recover else "")
    quant = QuantConfig(target=TARGET, per_channel=False)
    options = TuneOptions(MAX_DROP, rank=rank, max_evaluations=max_evaluations, report_isolated=False,
                          images=ImageChoice(num_tune=num_tune))
    res = tune(model, out_dir / f"{tag}.int8.onnx", options, None, RunConfig(progress=False), quant, recover=recover,
               json_path=out_dir / f"{tag}.tune.json")
    row.update(complete=res.complete, max_evaluations=max_evaluations, wall_s=round(time.perf_counter() - t0, 1), layers=res.layers, limit=res.evaluation_limit,
               evaluations=len(res.evaluations), float_layers=[f.name for f in res.float_layers],
               gains=[f.gain for f in res.float_layers], tune_drop=res.tune_drop, report_drop_val100=res.report_drop,
               over_budget=res.over_budget, seconds=res.seconds,
               ranking_s=res.ranking.seconds if res.ranking else 0.0,
               eval_s=[round(e.seconds, 1) for e in res.evaluations])

    # held-out drop of the tuned model and of the all-int8 model, plain sessions over every held-out image
    root = builtin_dataset(progress=False)
    images = choose_images(root, num_tune=num_tune)
    preset = preset_for_session(make_session(model), None)
    stats = collect_stats(model, DataConfig(root, split="train", ids=images.calibration.ids), RunConfig(progress=False))
    table = build_table(stats, "kl", TARGET)
    builder = (RecoveryBuilder(model, stats, table, open_dataset(root, "train"), quant) if recover
               else QuantizeBuilder(model, table, quant))
    val = open_dataset(heldout, "val")
    held = TuningSet(val, val.ids, preset, cache_bytes=0)
    held.set_float(model)
    row["heldout_images"] = len(val.ids)
    row["heldout_miou_float"] = held.float_score.miou
    row["heldout_drop"] = held.drop(res.out)
    with tempfile.TemporaryDirectory() as tmp:
        base = builder.build(frozenset(), Path(tmp) / "all.onnx")
        # with no float layer the tuned model is the all-int8 model (the same graph, more metadata)
        row["heldout_drop_all_int8"] = held.drop(base) if res.float_layers else row["heldout_drop"]
        layers = find_layers(load_onnx(model), builder.last.float_nodes)
        by_name = {layer.name: layer for layer in layers}
        k = len(res.float_layers)
        row["greedy"] = None
        if not greedy_ref:
            row["greedy"] = None
        elif k >= 2:
            tuning = TuningSet(open_dataset(root, "train"), images.tuning.ids, preset)
            tuning.set_float(model)
            counter = [0]

            def drop(float_set: frozenset[str]) -> float:
                counter[0] += 1
                path = builder.build(frozenset(excluded_nodes(by_name[n] for n in float_set)),
                                     Path(tmp) / f"g{counter[0]}.onnx")
                value = tuning.drop(path)
                path.unlink()
                return value

            t = time.perf_counter()
            chosen, final, evals = greedy([layer.name for layer in layers], drop, MAX_DROP, max_steps=k - 1)
            row["greedy"] = {"float_layers": list(chosen), "drop": final, "evaluations": evals,
                             "met": final <= MAX_DROP, "seconds": round(time.perf_counter() - t, 1)}
        else:
            row["greedy"] = {"float_layers": None, "note": "all-int8 misses the budget, so greedy needs >= 1"
                             if k == 1 else "all-int8 meets the budget: greedy needs 0"}
    row["load_end"] = loadavg()
    return row


#: compute ops that must run between DequantizeLinear and QuantizeLinear on an integer-only target
def float_compute_ops(path) -> list[str]:
    """Returns the nodes ``fcnquant check`` finds computing in float or fp16 on the target (the final logits aside)."""
    from fcnquant.check import check_model

    return [f.node for f in check_model(path, TARGET).findings if f.kind in ("float", "fp16")]


def run_int16(name: str, heldout_set, out_dir: Path, recover: bool, num_tune: int, num_report: int) -> dict:
    """``tune --max-drop 0.05 --fallback int16 [--recover]`` at npu-pow2 per-tensor: held-out drop, float compute
    ops, evaluations against ceil(log2 L) + 3, the tuning drop with its interval."""
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.tune import ImageChoice, TuneOptions, tune

    model = demo_model_path(name)
    tag = f"{name}.int16{'.recover' if recover else ''}"
    row: dict = {"model": name, "recover": recover, "fallback": "int16", "num_tune": num_tune,
                 "load_start": loadavg()}
    t0 = time.perf_counter()
    options = TuneOptions(MAX_DROP, fallback="int16", report_isolated=False,
                          images=ImageChoice(num_tune=num_tune, num_report=num_report))
    res = tune(model, out_dir / f"{tag}.int8.onnx", options, None, RunConfig(progress=False),
               QuantConfig(target=TARGET, per_channel=False), recover=recover, json_path=out_dir / f"{tag}.json")
    i = res.tune_interval
    row.update(wall_s=round(time.perf_counter() - t0, 1), layers=res.layers, limit=res.evaluation_limit,
               evaluations=len(res.evaluations), objective=res.objective, over_budget=res.over_budget,
               int16_layers=[f.name for f in res.float_layers], tune_drop=res.tune_drop,
               tune_interval=[i.lo, i.hi] if i is not None else None, resolution=res.resolution,
               seconds=res.seconds, float_ops=float_compute_ops(res.out),
               steps=[(e.step, len(e.float_layers), round(e.drop, 4)) for e in res.evaluations])
    row["heldout_images"] = len(heldout_set.ids)
    row["heldout_miou_float"] = heldout_set.float_score.miou
    row["heldout_drop"] = heldout_set.drop(res.out)
    row["load_end"] = loadavg()
    return row


def render_int16(rows: list[dict]) -> str:
    """Returns the Markdown table of the int16 rows."""
    lines = ["| model | --recover | held-out drop | float ops | evaluations (limit) | int16 layers / L | "
             "tuning drop [95% interval] | wall s | load |", "|" + " --- |" * 9]
    for r in rows:
        lo, hi = r["tune_interval"] or (float("nan"), float("nan"))
        lines.append(f"| {r['model']} | {'yes' if r['recover'] else 'no'} | {r['heldout_drop']:+.3f} | "
                     f"{len(r['float_ops'])} | {r['evaluations']} ({r['limit']}) | "
                     f"{len(r['int16_layers'])} / {r['layers']} | {r['tune_drop']:+.3f} [{lo:+.2f}, {hi:+.2f}] | "
                     f"{r['wall_s']:.0f} | {r['load_start']} / {r['load_end']} |")
    return "\n".join(lines)


def main_int16(args) -> int:
    """The int16 runs: every model without then with --recover; rows to ``--results`` as they finish."""
    from fcnquant.data import open_dataset, preset_for_session
    from fcnquant.demo_models import demo_model_path
    from fcnquant.runtime import make_session
    from fcnquant.tune.tuning_set import TuningSet

    rows: list[dict] = []
    if args.results.is_file():  # rows of other (model, recover) pairs stay; a rerun of a pair replaces its row
        rows = json.loads(args.results.read_text())["rows"]
    val = open_dataset(args.heldout, "val")
    ids = val.ids[:args.heldout_images] if args.heldout_images else val.ids
    held: dict[str, TuningSet] = {}
    names = [m for m in args.models.split(",") if m]
    for recover in {"both": (False, True), "no": (False,), "yes": (True,)}[args.int16_recover]:  # cheaper half first
        for name in names:
            if name not in held:
                model = demo_model_path(name)
                held[name] = TuningSet(val, ids, preset_for_session(make_session(model), None), cache_bytes=0)
                held[name].set_float(model)
            print(f"== {name} int16 recover={recover} load {loadavg()}", file=sys.stderr, flush=True)
            rows = [r for r in rows if (r["model"], r["recover"]) != (name, recover)]
            rows.append(run_int16(name, held[name], args.out, recover, args.num_tune, args.num_report))
            print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
            args.results.write_text(json.dumps({"max_drop": MAX_DROP, "target": TARGET, "per_channel": False,
                                                "rows": rows}, indent=1, default=str) + "\n")
    print(render_int16(rows))
    return 0


def render(rows: list[dict]) -> str:
    head = ("| model | ranking, tuning images | L | evaluations (limit) | float layers | tuning drop | held-out drop, tuned "
            "(all int8) | greedy float layers | ranking s | tune wall s | load |")
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        g = r.get("greedy")
        k = len(r["float_layers"])
        if g is None:
            greedy_txt = "not run"
        elif g.get("float_layers") is None:
            greedy_txt = f">= {k} ({g['note']})" if k else "0"
        elif g["met"]:
            greedy_txt = f"{len(g['float_layers'])} ({g['evaluations']} evals)"
        else:
            greedy_txt = f">= {k} (not met after {k - 1} steps, {g['evaluations']} evals)"
        names = ", ".join(f"`{n}`" for n in r["float_layers"]) or "none"
        lines.append(
            f"| {r['model']}{' --recover' if r.get('recover') else ''} | {r['rank']}, {r.get('num_tune', 200)} | {r['layers']} | {r['evaluations']} ({r['limit']}) | {k}: {names} | "
            f"{r['tune_drop']:.3f} | {r['heldout_drop']:.3f} ({r['heldout_drop_all_int8']:.3f}) | {greedy_txt} | "
            f"{r['ranking_s']:.0f} | {r['wall_s']:.0f} | {r['load_start']} / {r['load_end']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", type=Path, default=Path("/tmp/fq/val1k"))
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fcnquant-bench-tune")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--isolated", default="fcn8s", help="models also tuned with --rank isolated ('' for none)")
    p.add_argument("--no-greedy", action="store_true")
    p.add_argument("--num-tune", type=int, default=200, help="tuning images (default %(default)s)")
    p.add_argument("--max-evaluations", type=int, help="stop each search after N evaluations (default: no limit)")
    p.add_argument("--recover", action="store_true", help="tune with --recover (pow2 by error + bias correction on "
                   "every candidate); the all-int8 reference is then recovered too")
    p.add_argument("--int16", action="store_true", help="the int16 runs instead: tune --fallback int16, without "
                   "and with --recover, held-out drop, float compute ops, evaluations against the bound")
    p.add_argument("--int16-recover", choices=("both", "no", "yes"), default="both",
                   help="--int16: the runs without --recover, with it, or both (default %(default)s)")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "tune_int16.json")
    p.add_argument("--heldout-images", type=int, help="held-out images used (default: all)")
    p.add_argument("--num-report", type=int, default=20, help="tune's own reporting images (--int16; the verdict "
                   "is the held-out drop)")
    args = p.parse_args(argv)
    if not (args.heldout / "VOC2012").is_dir() and not (args.heldout / "ImageSets").is_dir():
        from fcnquant.data import write_synthetic_voc

        write_synthetic_voc(args.heldout, train=0, val=1000, seed=1, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.int16:
        return main_int16(args)
    rows = []
    jobs = [(m, "sensitivity") for m in args.models.split(",") if m]
    jobs += [(m, "isolated") for m in args.isolated.split(",") if m]
    for name, rank in jobs:
        print(f"== {name} ({rank}) load {loadavg()}", file=sys.stderr, flush=True)
        row = run_one(name, args.heldout, args.out, rank, greedy_ref=not args.no_greedy and rank == "sensitivity",
                      num_tune=args.num_tune, max_evaluations=args.max_evaluations, recover=args.recover)
        rows.append(row)
        (args.out / f"rows.{args.num_tune}.{args.models}.{args.isolated}{'.recover' if args.recover else ''}.json").write_text(json.dumps(rows, indent=1, default=str))
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
