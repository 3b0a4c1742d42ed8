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

Every inference runs on the executor of the run's :class:`~fcnquant.execute.RunConfig`: the statistics and every
tuning evaluation as image shards, the sensitivity ranking as one task per candidate; building the candidates (and
recovery's bias correction) stays in this process. Everything is built in a temporary folder; ``out``, the JSON
and the HTML are each written atomically at the end, so an interrupted run leaves none of them behind,
half-written or stale-but-new.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import FcnquantError
from fcnquant.execute import Executor, RunConfig
from fcnquant.quantize import QuantConfig
from fcnquant.recover.plan import RecoveryPlan
from fcnquant.tune.builder import Builder, QuantizeBuilder, RecoveryBuilder, resolve_fallback
from fcnquant.tune.confidence import bootstrap_drop, upper_bound
from fcnquant.tune.images import ImageSets
from fcnquant.tune.layers import Layer, excluded_nodes, find_layers
from fcnquant.tune.options import TuneOptions
from fcnquant.tune.ranking import Ranking, rank_isolated, rank_sensitivity
from fcnquant.tune.result import FloatLayer, TuneResult
from fcnquant.tune.search import Evaluation, SearchOutcome, search
from fcnquant.tune.tuning_set import Score, TuningSet

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
    out: str | os.PathLike[str],
    options: TuneOptions,
    data: DataConfig | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    quant: QuantConfig | None = None,
    *,
    recover: bool | RecoveryPlan = False,
    builder: Builder | None = None,
    json_path: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
) -> TuneResult:
    """Returns the TuneResult of meeting ``options.max_drop`` (mIoU points on the tuning set) with the fewest
    float layers.

    ``out`` receives the int8 model when the budget is met (else ``over_budget_path(out)``); ``json_path`` and
    ``report`` (HTML, the compare report on the reporting images) are optional. ``data``: the VOC root (None: the
    dataset :func:`fcnquant.data.resolve_data` finds: $FCNQUANT_DATA, ./data/VOCdevkit, ./VOCdevkit, else the
    built-in synthetic VOC with a warning; the synthetic VOC directly for a shipped demo model), the preprocessing (``preset``, ``size``, ``mean``, ``std``; default the model's) and
    the ``seed`` of the image selections; which images serve which purpose is ``options.images``. ``run``: the
    executor and batch size (a RayExecutor runs the inference on a cluster, with the same result as one process:
    every count is exact; the run holds one connection from start to end).
    ``quant``: method, target, weight granularity and nodes kept in float in every candidate. ``recover``: True
    (the target's recovery passes, :class:`~fcnquant.tune.builder.RecoveryBuilder`) or a RecoveryPlan;
    ``builder`` replaces the candidate builder. Every result carries the chosen model's tuning drop with its
    paired bootstrap interval (``fcnquant.tune.confidence``). Raises FcnquantError for bad input before any
    inference.
    """
    from fcnquant._io import all_or_nothing, atomic_path, load_onnx
    from fcnquant.graph import require_float

    t_start = time.perf_counter()
    model, out = Path(model), Path(out)
    quant = quant if quant is not None else QuantConfig()
    for path in (out, json_path, report):
        if path is not None and not (Path(path).parent if str(Path(path).parent) else Path(".")).is_dir():
            raise FcnquantError(f"output folder does not exist: {Path(path).parent}")
    quant.check()
    fallback = resolve_fallback(options.fallback, quant.target)
    options = options.with_(fallback=fallback, objective=options.resolved_objective(fallback))
    if options.objective == "agreement" and options.confidence is not None:
        raise FcnquantError("confidence bounds the labelled drop; it needs objective 'labelled'")
    float_proto = load_onnx(model)
    require_float(float_proto, str(model), "tune")
    cfg = _tune_data(DataConfig.of(data))
    run = RunConfig.of(run)
    run = run.with_(executor=run.resolved())
    executor = run.resolved()
    held = executor if hasattr(executor, "__enter__") else contextlib.nullcontext()
    with held, tempfile.TemporaryDirectory(prefix="fcnquant-tune-") as tmp_name:  # one cluster connection
        setup = _prepare(model, cfg, run, quant, options, recover, builder)
        found = _search(model, float_proto, setup, run, options, Path(tmp_name))
        final_tmp, interval, tune_drop = _final_model(found, setup, options, Path(tmp_name) / "final.onnx")
        t = time.perf_counter()
        rep = _report_pass(model, final_tmp, setup, run, options)
        setup.seconds["report"] = round(time.perf_counter() - t, 2)
        met = _met(found, interval, options)
        written = over_budget_path(out) if not met else out
        setup.seconds["total"] = round(time.perf_counter() - t_start, 2)
        result = TuneResult(
            model=str(model), out=str(written), over_budget=not met, max_drop=options.max_drop,
            target=str(quant.target), method=quant.method, per_channel=quant.per_channel, fallback=options.fallback,
            recover=bool(recover), layers=len(found.layers), float_layers=found.float_layers, tune_drop=tune_drop,
            tune_interval=interval, confidence=options.confidence, objective=options.objective,
            report_drop=rep.miou_drop if rep.final.labelled else None, miou_float_tune=setup.float_score.miou,
            miou_float_report=rep.final.miou_float if rep.final.labelled else None,
            miou_quant_report=rep.final.miou_quant if rep.final.labelled else None,
            evaluations=found.evaluation_log, complete=found.outcome.complete, ranking=found.ranking,
            images=setup.images, report_html=str(report) if report is not None else None,
            json_path=str(json_path) if json_path is not None else None, seconds=setup.seconds,
        )
        # no second load check of the model: the report pass above ran this very file in onnxruntime
        with all_or_nothing():  # the model, the HTML report and the JSON: all of them or none
            with atomic_path(written) as tmp_out:
                shutil.copyfile(final_tmp, tmp_out)
            _write_reports(result, rep, report, json_path)
    return result


def _tune_data(cfg: DataConfig) -> DataConfig:
    """Returns ``cfg`` with its root as a path; FcnquantError for the image choices tune makes itself."""
    if cfg.ids is not None or cfg.num_images is not None:
        raise FcnquantError("tune chooses its calibration, tuning and reporting images itself: give their splits "
                            "and counts in TuneOptions.images, not ids or num_images in the data")
    if cfg.ann_dir is not None:
        raise FcnquantError("tune reads the annotations of the VOC layout; ann_dir is not supported")
    if isinstance(cfg.root, Dataset):
        return cfg.with_(root=Path(cfg.root.root))
    return cfg


@dataclass
class _Setup:
    """What the search runs on: the images, the candidate builder, the tuning set and the float model's score."""

    images: ImageSets
    root: Path
    report_root: Path
    preset: object
    builder: Builder
    tuning: TuningSet
    float_score: Score
    seconds: dict


def _prepare(model: Path, cfg: DataConfig, run: RunConfig, quant: QuantConfig, options: TuneOptions,
             recover: bool | RecoveryPlan, builder: Builder | None) -> _Setup:
    """Chooses the images, collects the statistics once, makes the builder and scores the float model."""
    from fcnquant.calibrate import build_table
    from fcnquant.calibrate.collect import collect_with_extra
    from fcnquant.data import open_dataset, resolve_data
    from fcnquant.runtime import make_session

    executor = run.resolved()
    seconds: dict[str, float] = {}
    # the same discovery as every command: given, $FCNQUANT_DATA, ./data/VOCdevkit, ./VOCdevkit, else synthetic
    root = resolve_data(cfg.root, model, progress=executor.progress).root
    choice = options.images
    images = choice.choose(root, cfg.seed)
    report_root = Path(choice.report_root) if choice.report_root is not None else root
    # A CPU session: it only reads the model's metadata and input shape (a GPU provider would cost its start-up).
    preset = cfg.preset_for(make_session(model, threads=getattr(executor, "threads", 0)))

    t = time.perf_counter()
    calibration = cfg.with_(root=root, split=images.calibration.split, ids=images.calibration.ids)
    plan = None
    if builder is None and recover:
        plan = recover if isinstance(recover, RecoveryPlan) else RecoveryBuilder.default_plan(quant)
    # the fast bias correction's float tap means ride on the calibration pass, once for every candidate
    stats, taps = collect_with_extra(model, calibration, run,
                                     extra=RecoveryBuilder.tap_accumulators(model, plan) if plan else None)
    table = build_table(stats, quant.method, quant.target, pow2_rounding=quant.pow2_rounding,
                        **quant.method_params)
    seconds["calibrate"] = round(time.perf_counter() - t, 2)
    if plan is not None:
        builder = RecoveryBuilder(model, stats, table, open_dataset(root, images.calibration.split), quant,
                                  options.fallback, plan, tap_means=taps or None)
    elif builder is None:
        builder = QuantizeBuilder(model, table, quant, options.fallback)

    t = time.perf_counter()
    tuning = TuningSet(open_dataset(root, images.tuning.split), images.tuning.ids, preset, run)
    float_score = tuning.set_float(model, agreement=options.objective == "agreement")
    seconds["float_tuning_eval"] = round(time.perf_counter() - t, 2)
    log.info("float model: %.3f mIoU on %d tuning images", float_score.miou, float_score.images)
    return _Setup(images, root, report_root, preset, builder, tuning, float_score, seconds)


class _Evaluations:
    """The search's oracle: builds the candidate of a set of float layers and scores it on the tuning set."""

    def __init__(self, setup: _Setup, by_name: dict[str, Layer], tmp: Path, confidence: float | None,
                 objective: str = "labelled") -> None:
        self.setup, self.by_name, self.tmp, self.confidence = setup, by_name, tmp, confidence
        self.objective = objective
        self.scores: dict[frozenset[str], Score] = {}  # float layers -> Score (per-image matrices kept)
        self.count = 0
        self.reference = 0.0  # agreement: the changed-pixel percentage with every layer in the fallback

    def nodes(self, float_layers) -> list[str]:
        """Returns the node names of ``float_layers`` (in their order)."""
        return excluded_nodes(self.by_name[n] for n in float_layers)

    def drop(self, float_set: frozenset[str]) -> float:
        """Returns the drop (or its upper bound at ``confidence``) of the candidate with ``float_set`` in float."""
        self.count += 1
        path = self.setup.builder.build(frozenset(self.nodes(float_set)), self.tmp / f"eval{self.count}.onnx")
        score = self.scores[frozenset(float_set)] = self.setup.tuning.score(path)
        path.unlink(missing_ok=True)
        if self.objective == "agreement":
            return score.disagreement - self.reference
        reference = self.setup.float_score
        if self.confidence is None:
            return reference.miou - score.miou
        return upper_bound(reference.confusions, score.confusions, self.confidence)


@dataclass
class _Found:
    """The search's outcome with the layers, the ranking (None when not needed) and every evaluation's score."""

    outcome: SearchOutcome
    layers: list[Layer]
    ranking: Ranking | None
    evaluations: _Evaluations
    float_layers: tuple[FloatLayer, ...]
    evaluation_log: tuple[Evaluation, ...] = ()  # every evaluation of the tuning set, the reference's included


def _search(model: Path, float_proto, setup: _Setup, run: RunConfig, options: TuneOptions, tmp: Path) -> _Found:
    """Runs the search (ranking only when everything int8 misses the budget); returns what it found."""
    from tqdm import tqdm

    base = setup.builder.build(frozenset(), tmp / "all-int8.onnx")
    last = getattr(setup.builder, "last", None)
    layers = find_layers(float_proto, getattr(last, "float_nodes", ()))
    by_name = {layer.name: layer for layer in layers}
    evaluations = _Evaluations(setup, by_name, tmp, options.confidence, options.objective)
    ranked: list[Ranking] = []
    limit = evaluation_limit(len(layers))
    budget = min(options.max_evaluations or limit, limit)
    log_head: list[Evaluation] = []
    full_drop = None
    if options.objective == "agreement" and layers:
        log_head.append(_reference(evaluations, layers, options.max_drop))
        budget, full_drop = budget - 1, 0.0

    def ranking() -> tuple[str, ...]:
        t_rank = time.perf_counter()
        r = _rank(model, base, layers, setup, run, options)
        ranked.append(r)
        setup.seconds["ranking"] = round(time.perf_counter() - t_rank, 2)
        log.info("ranked %d layers by %s on %d images in %.1f s", len(layers), options.rank, r.images, r.seconds)
        return r.order

    t = time.perf_counter()
    with tqdm(desc="tune", unit="eval", disable=not run.resolved().progress) as bar:
        def on_eval(ev) -> None:
            bar.update(1)
            bar.set_postfix(float=len(ev.float_layers), drop=f"{ev.drop:.3f}")
            log.debug("evaluation %d (%s): %d float, drop %.4f", ev.index, ev.step, len(ev.float_layers), ev.drop)

        outcome = search(ranking, evaluations.drop, options.max_drop, max_evaluations=max(budget, 1),
                         on_evaluation=on_eval, full_drop=full_drop)
    setup.seconds["search"] = round(time.perf_counter() - t, 2)
    rk = ranked[0] if ranked else None
    positions = {n: k + 1 for k, n in enumerate(rk.order)} if rk is not None else {}
    float_layers = tuple(
        FloatLayer(name=n, op_type=by_name[n].op_type, nodes=by_name[n].nodes, rank=positions.get(n, 0),
                   score=rk.scores.get(n, math.nan) if rk is not None else math.nan, gain=outcome.gains.get(n))
        for n in outcome.float_layers)
    shifted = tuple(replace(e, index=e.index + len(log_head)) for e in outcome.evaluations)
    return _Found(outcome, layers, rk, evaluations, float_layers, tuple(log_head) + shifted)


def evaluation_limit(layers: int) -> int:
    """Returns ceil(log2 L) + 3, the most evaluations of the tuning set a search over L layers makes."""
    return math.ceil(math.log2(layers)) + 3 if layers > 1 else 3


def _reference(evaluations: _Evaluations, layers: list[Layer], max_drop: float) -> Evaluation:
    """Evaluates the candidate with every layer in the fallback (the agreement objective's zero) and returns
    its Evaluation."""
    t = time.perf_counter()
    every = frozenset(layer.name for layer in layers)
    evaluations.drop(every)
    evaluations.reference = evaluations.scores[every].disagreement
    log.info("every layer in the fallback: %.4f %% of pixels change class", evaluations.reference)
    return Evaluation(1, tuple(layer.name for layer in layers), 0.0, time.perf_counter() - t, "reference",
                      0.0 <= max_drop)


def _rank(model: Path, base: Path, layers: list[Layer], setup: _Setup, run: RunConfig,
          options: TuneOptions) -> Ranking:
    """Returns the ranking of ``layers`` on the first ``options.rank_images`` tuning images."""
    if options.rank == "isolated":
        rank_ids = setup.images.tuning.ids[:options.rank_images]
        data = DataConfig(setup.root, split=setup.images.tuning.split, ids=rank_ids, preset=setup.preset)
        return rank_isolated(model, base, layers, data, run)
    batches = [b.images for b in setup.tuning.batches()][:options.rank_images]
    build = setup.builder.build
    if options.fallback == "int16" and isinstance(setup.builder, RecoveryBuilder):
        # an order needs no recovery: one emission per layer, not one bias correction per layer
        build = functools.partial(QuantizeBuilder.build, setup.builder)
    return rank_sensitivity(model, layers, build, batches, run)


def _final_model(found: _Found, setup: _Setup, options: TuneOptions, path: Path):
    """Writes the chosen model with its tuning metadata to ``path``; returns (path, drop interval, tuning drop)."""
    import onnx

    from fcnquant._io import load_onnx
    from fcnquant.quantize.name_map import set_metadata

    outcome, evaluations = found.outcome, found.evaluations
    final_tmp = setup.builder.build(frozenset(evaluations.nodes(outcome.float_layers)), path)
    chosen = evaluations.scores.get(frozenset(outcome.float_layers)) or setup.tuning.score(final_tmp)
    reference = setup.float_score
    interval = bootstrap_drop(reference.confusions, chosen.confusions)
    tune_drop = reference.miou - chosen.miou
    proto = load_onnx(final_tmp)
    set_metadata(proto, {
        FLOAT_LAYERS_KEY: json.dumps([f.name for f in found.float_layers]),
        "fcnquant.float_nodes": json.dumps(evaluations.nodes(outcome.float_layers)),
        TUNE_KEY: json.dumps({"format_version": 1, "max_drop": options.max_drop, "tune_drop": tune_drop,
                              "tune_interval": interval.to_dict(), "confidence": options.confidence,
                              "over_budget": not _met(found, interval, options),
                              "evaluations": len(found.evaluation_log), "fallback": options.fallback,
                              "objective": options.objective, "tuning_images": len(setup.images.tuning.ids)}),
    })
    onnx.save_model(proto, str(final_tmp))
    return final_tmp, interval, tune_drop


def _met(found: _Found, interval, options: TuneOptions) -> bool:
    """True when the search met the budget and, for the agreement objective, the labelled tuning drop is not
    surely over it (its interval's lower end within the budget)."""
    if not found.outcome.met:
        return False
    if options.objective != "agreement" or interval is None or not math.isfinite(interval.lo):
        return True
    return interval.lo <= options.max_drop


def _report_pass(model: Path, final: Path, setup: _Setup, run: RunConfig, options: TuneOptions):
    """Returns the compare report of the chosen model on the reporting images (the verdict)."""
    from fcnquant.compare import CompareOptions, compare_models

    reporting = setup.images.reporting
    data = DataConfig(setup.report_root, split=reporting.split, ids=reporting.ids, preset=setup.preset)
    return compare_models(model, final, data, run, CompareOptions(isolated=options.report_isolated))


def _write_reports(result: TuneResult, rep, report, json_path) -> None:
    """Writes the HTML report (compare's, the tuning section on top) and the JSON."""
    if report is not None:
        from fcnquant._io import atomic_write_text
        from fcnquant.compare.report.html import render_html

        page = render_html(rep)
        page = page.replace("<main>", "<main>" + result.html_section(), 1)
        atomic_write_text(report, page)
    if json_path is not None:
        result.to_json(json_path)
