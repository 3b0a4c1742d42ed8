"""``tune``: the int8 model that meets an mIoU budget with the fewest layers left in float, in few evaluations.

1. Images: calibration, tuning and reporting sets, pairwise disjoint (``fcnquant.tune.images``).
2. Statistics are collected once on the calibration images and one table computed (``fcnquant.calibrate``); the
   :class:`~fcnquant.tune.builder.Builder` makes every candidate model from them without recollecting.
3. The float model's tuning-set confusion is computed once; each evaluation is one plain inference pass of a
   candidate over the tuning set (``fcnquant.tune.tuning_set``).
4. The search (``fcnquant.tune.search``): all int8; if over budget, rank the layers (``fcnquant.tune.ranking``),
   gallop and bisect the ranking for the shortest prefix that meets the budget, prune it.
5. The chosen model gets ``fcnquant.float_layers`` (and the tuning verdict) in its metadata; ``compare_models``
   on the reporting images gives the verdict (HTML report with the tuning section on top). A model that misses
   the budget is written under an over-budget name (``<out>.over-budget.onnx``), never as ``out``.

Everything is built in a temporary folder; ``out``, the JSON and the HTML are each written atomically at the end,
so an interrupted run leaves none of them behind, half-written or stale-but-new.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from fcnquant.errors import FcnquantError
from fcnquant.tune.builder import FALLBACKS, Builder, QuantizeBuilder, RecoveryBuilder
from fcnquant.tune.confidence import bootstrap_drop, upper_bound
from fcnquant.tune.images import choose_images
from fcnquant.tune.layers import excluded_nodes, find_layers
from fcnquant.tune.ranking import RANKINGS, rank_isolated, rank_sensitivity
from fcnquant.tune.result import FloatLayer, TuneResult
from fcnquant.tune.search import search

log = logging.getLogger(__name__)

FLOAT_LAYERS_KEY = "fcnquant.float_layers"
TUNE_KEY = "fcnquant.tune"


def over_budget_path(out: str | os.PathLike[str]) -> Path:
    """Returns where a model that misses the budget is written: ``m.int8.onnx`` -> ``m.int8.over-budget.onnx``."""
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.over-budget.onnx")


def tune(
    model: str | os.PathLike[str],
    max_drop: float,
    out: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    target: str = "ort-cpu",
    method: str = "kl",
    per_channel: bool = True,
    recover: bool = False,
    fallback: str = "float",
    json_path: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    calib_split: str = "train",
    num_calib: int = 50,
    tune_split: str | None = None,
    num_tune: int = 200,
    report_split: str = "val",
    num_report: int | None = None,
    report_data: str | os.PathLike[str] | None = None,
    report_isolated: bool = True,
    seed: int = 0,
    rank: str = "sensitivity",
    rank_images: int = 16,
    max_evaluations: int | None = None,
    builder: Builder | None = None,
    progress: bool = True,
    threads: int = 0,
    ray_address: str | None = None,
    shards: int | None = None,
    confidence: float | None = None,
) -> TuneResult:
    """Returns the TuneResult of meeting ``max_drop`` (mIoU points on the tuning set) with the fewest float layers.

    ``out`` receives the int8 model when the budget is met (else ``over_budget_path(out)``); ``json_path`` and
    ``report`` (HTML, the compare report on the reporting images) are optional. ``report_data``: a VOC root
    for the reporting images other than ``data`` (e.g. a held-out set generated with another seed);
    ``report_isolated=False`` skips the report's isolated-drift pass (faster; the drop is the same). ``rank``: ``sensitivity`` or
    ``isolated`` (``fcnquant.tune.ranking``), on the first ``rank_images`` tuning images. ``builder`` replaces
    the default ``QuantizeBuilder`` (``recover`` picks ``fcnquant.recover``'s). ``ray_address`` ("local", "auto"
    or "HOST:PORT") runs the inference on a Ray cluster, one connection for the whole run: the statistics, every
    tuning evaluation and the report in ``shards`` image shards, the sensitivity ranking as one task per layer
    (``fcnquant.distributed``); the result is the same as in one process (every count is exact). Building the
    candidates (and recovery's bias correction) stays in this process. Every result carries the chosen model's
    tuning drop with its paired bootstrap interval (``fcnquant.tune.confidence``); ``confidence`` (e.g. 0.9)
    makes the search hold that one-sided upper bound of each candidate's drop to ``max_drop`` instead of the
    point estimate: more layers in float, a budget met with that confidence on images like the tuning ones.
    Raises FcnquantError for bad input before any inference.
    """
    from tqdm import tqdm

    from fcnquant._io import atomic_path, load_onnx
    from fcnquant.calibrate import collect, compute_table
    from fcnquant.calibrate.methods import resolve_params
    from fcnquant.calibrate.qparams import get_target
    from fcnquant.data import builtin_dataset, open_dataset, preset_for_session
    from fcnquant.quantize.name_map import set_metadata
    from fcnquant.runtime import make_session
    from fcnquant.tune.tuning_set import TuningSet

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    model = Path(model)
    out = Path(out)
    if not math.isfinite(max_drop):
        raise FcnquantError(f"the mIoU budget must be a finite number, got {max_drop}")
    if fallback not in FALLBACKS:
        raise FcnquantError(f"unknown fallback '{fallback}' (choose from {', '.join(FALLBACKS)})")
    if rank not in RANKINGS:
        raise FcnquantError(f"unknown ranking '{rank}' (choose from {', '.join(RANKINGS)})")
    if rank_images < 1:
        raise FcnquantError(f"rank_images must be at least 1, got {rank_images}")
    if confidence is not None and not 0.5 <= confidence < 1.0:
        raise FcnquantError(f"confidence must be in [0.5, 1), got {confidence}")
    if max_evaluations is not None and max_evaluations < 1:
        raise FcnquantError(f"max_evaluations must be at least 1, got {max_evaluations}")
    for path in (out, json_path, report):
        if path is not None and not (Path(path).parent if str(Path(path).parent) else Path(".")).is_dir():
            raise FcnquantError(f"output folder does not exist: {Path(path).parent}")
    resolve_params(method)
    get_target(target)
    float_proto = load_onnx(model)
    if shards is not None and ray_address is None:
        raise FcnquantError("shards= sets the number of shards of a Ray run: add ray_address=")
    if ray_address is not None:
        from fcnquant.distributed import ray_session

        cluster = ray_session(ray_address)
    else:
        cluster = contextlib.nullcontext()
    with cluster:
        use_recovery = recover and builder is None

        root = Path(data) if data is not None else builtin_dataset(progress=progress)
        images = choose_images(root, calib_split=calib_split, num_calib=num_calib, tune_split=tune_split,
                               num_tune=num_tune, report_split=report_split, num_report=num_report, seed=seed,
                               report_root=report_data)
        report_root = Path(report_data) if report_data is not None else root
        preset = preset_for_session(make_session(model, threads=threads), None)

        t = time.perf_counter()
        stats = collect(model, root, calib_split, ids=list(images.calibration.ids), progress=progress,
                        ray_address=ray_address, shards=shards)
        table = compute_table(stats, method, target)
        seconds["calibrate"] = round(time.perf_counter() - t, 2)
        if builder is None:
            builder = (RecoveryBuilder(model, stats, table, open_dataset(root, calib_split), target=target,
                                       per_channel=per_channel, fallback=fallback) if use_recovery
                       else QuantizeBuilder(model, table, target=target, per_channel=per_channel, fallback=fallback))

        t = time.perf_counter()
        tuning = TuningSet(open_dataset(root, images.tuning.split), images.tuning.ids, preset, threads=threads,
                           ray_address=ray_address, shards=shards)
        float_score = tuning.set_float(model)
        seconds["float_tuning_eval"] = round(time.perf_counter() - t, 2)
        log.info("float model: %.3f mIoU on %d tuning images", float_score.miou, float_score.images)

        with tempfile.TemporaryDirectory(prefix="fcnquant-tune-") as tmp_name:
            tmp = Path(tmp_name)
            base = builder.build(frozenset(), tmp / "all-int8.onnx")
            last = getattr(builder, "last", None)
            layers = find_layers(float_proto, getattr(last, "float_nodes", ()))
            by_name = {layer.name: layer for layer in layers}
            counter = [0]

            scores: dict[frozenset[str], object] = {}  # float layers -> Score (per-image matrices kept)

            def drop(float_set: frozenset[str]) -> float:
                counter[0] += 1
                path = builder.build(frozenset(excluded_nodes(by_name[n] for n in float_set)),
                                     tmp / f"eval{counter[0]}.onnx")
                score = scores[frozenset(float_set)] = tuning.score(path)
                path.unlink(missing_ok=True)
                if confidence is None:
                    return float_score.miou - score.miou
                return upper_bound(float_score.confusions, score.confusions, confidence)

            ranking_box: list = []

            def ranking() -> Sequence[str]:
                t_rank = time.perf_counter()
                rank_ids = list(images.tuning.ids[:rank_images])
                if rank == "isolated":
                    r = rank_isolated(model, base, layers, root, images.tuning.split, rank_ids, preset=preset,
                                      threads=threads, ray_address=ray_address, shards=shards)
                else:
                    batches = [b.images for b in tuning.batches()][:rank_images]
                    r = rank_sensitivity(model, layers, builder.build, batches, threads=threads,
                                         ray_address=ray_address)
                ranking_box.append(r)
                seconds["ranking"] = round(time.perf_counter() - t_rank, 2)
                log.info("ranked %d layers by %s on %d images in %.1f s", len(layers), rank, r.images, r.seconds)
                return r.order

            t = time.perf_counter()
            with tqdm(desc="tune", unit="eval", disable=not progress) as bar:
                def on_eval(ev) -> None:
                    bar.update(1)
                    bar.set_postfix(float=len(ev.float_layers), drop=f"{ev.drop:.3f}")
                    log.debug("evaluation %d (%s): %d float, drop %.4f", ev.index, ev.step, len(ev.float_layers),
                              ev.drop)

                outcome = search(ranking, drop, max_drop, max_evaluations=max_evaluations, on_evaluation=on_eval)
            seconds["search"] = round(time.perf_counter() - t, 2)
            rk = ranking_box[0] if ranking_box else None
            positions = {n: k + 1 for k, n in enumerate(rk.order)} if rk is not None else {}
            float_layers = tuple(
                FloatLayer(name=n, op_type=by_name[n].op_type, nodes=by_name[n].nodes, rank=positions.get(n, 0),
                           score=rk.scores.get(n, math.nan) if rk is not None else math.nan,
                           gain=outcome.gains.get(n))
                for n in outcome.float_layers)

            final_tmp = builder.build(frozenset(excluded_nodes(by_name[n] for n in outcome.float_layers)),
                                      tmp / "final.onnx")
            chosen = scores.get(frozenset(outcome.float_layers)) or tuning.score(final_tmp)
            interval = bootstrap_drop(float_score.confusions, chosen.confusions)
            tune_drop = float_score.miou - chosen.miou
            proto = load_onnx(final_tmp)
            over = not outcome.met
            set_metadata(proto, {
                FLOAT_LAYERS_KEY: json.dumps([f.name for f in float_layers]),
                "fcnquant.float_nodes": json.dumps(excluded_nodes(by_name[n] for n in outcome.float_layers)),
                TUNE_KEY: json.dumps({"format_version": 1, "max_drop": max_drop, "tune_drop": tune_drop,
                                      "tune_interval": interval.to_dict(), "confidence": confidence,
                                      "over_budget": over, "evaluations": len(outcome.evaluations),
                                      "fallback": fallback, "tuning_images": len(images.tuning.ids)}),
            })
            import onnx

            onnx.save_model(proto, str(final_tmp))

            t = time.perf_counter()
            from fcnquant.compare import compare_models

            rep = compare_models(model, final_tmp, data=report_root, split=images.reporting.split,
                                 ids=list(images.reporting.ids), preset=preset, table=None, progress=progress,
                                 isolated=report_isolated, threads=threads, ray_address=ray_address,
                                 shards=shards)
            seconds["report"] = round(time.perf_counter() - t, 2)
            written = over_budget_path(out) if over else out
            seconds["total"] = round(time.perf_counter() - t_start, 2)
            result = TuneResult(
                model=str(model), out=str(written), over_budget=over, max_drop=max_drop, target=target, method=method,
                per_channel=per_channel, fallback=fallback, recover=recover, layers=len(layers),
                float_layers=float_layers, tune_drop=tune_drop, tune_interval=interval, confidence=confidence,
                report_drop=rep.miou_drop if rep.final.labelled else None, miou_float_tune=float_score.miou,
                miou_float_report=rep.final.miou_float if rep.final.labelled else None,
                miou_quant_report=rep.final.miou_quant if rep.final.labelled else None,
                evaluations=outcome.evaluations, complete=outcome.complete, ranking=rk, images=images,
                report_html=str(report) if report is not None else None,
                json_path=str(json_path) if json_path is not None else None, seconds=seconds,
            )
            # the artifacts, each atomically, the model first
            with atomic_path(written) as tmp_out:
                shutil.copyfile(final_tmp, tmp_out)
        if report is not None:
            from fcnquant._io import atomic_write_text
            from fcnquant.compare.report.html import render_html

            page = render_html(rep)
            page = page.replace("<main>", "<main>" + result.html_section(), 1)
            atomic_write_text(report, page)
        if json_path is not None:
            result.to_json(json_path)
        return result
