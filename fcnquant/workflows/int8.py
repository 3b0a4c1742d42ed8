"""The int8 workflow: collect statistics -> recovery passes -> emit the int8 model -> write the artifacts.

This module sits above ``fcnquant.calibrate`` (statistics, tables), ``fcnquant.recover`` (equalization, AdaRound,
bias correction, scale search) and ``fcnquant.quantize`` (QDQ emission); none of them imports it. Order of the
passes, each optional (``fcnquant.recover.plan``):

1. cross-layer equalization of the float model (function-preserving; the statistics are collected on the
   equalized model, whose per-channel ranges are what the int8 model will see);
2. one collection pass and the calibration table (power-of-two scales by expected error where asked);
3. AdaRound: each Conv's int8 weights rounded to minimise its output error (a float model whose weights lie on
   the int8 grid, emitted with exactly those scales);
4. emission (``fcnquant.quantize.quantize_model``);
5. power-of-two targets, with ``scale_search`` (opt-in): each activation's power-of-two scale re-chosen by the
   int8 model's output error on calibration images (``fcnquant.recover.scale_search``), and the model emitted
   again with those scales;
6. empirical bias correction of the emitted model against the (equalized) float model (``bias_correction_error``:
   ``"weights"``, ``"accumulated"`` or ``"auto"``, the one of the two with the smaller output error).

What ran is recorded in the int8 model's metadata (``fcnquant.recovery``), shown by ``fcnquant compare``.
Nothing is written until every step has succeeded; then every requested artifact is written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fcnquant._io import all_or_nothing, atomic_path, check_outputs, load_onnx
from fcnquant.calibrate.collect import CollectOptions, collect_with_extra
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable, build_table
from fcnquant.data import DataConfig
from fcnquant.errors import FcnquantError
from fcnquant.execute import Executor, RunConfig, Shard
from fcnquant.quantize.config import QuantConfig
from fcnquant.recover.plan import RECOVERY_METADATA_KEY, RecoveryPlan
from fcnquant.runtime import written_model

if TYPE_CHECKING:  # the passes' modules load when a pass runs, not with every calibration
    from fcnquant.recover.adaround import AdaRoundOptions
    from fcnquant.recover.scale_search import ScaleSearchOptions

log = logging.getLogger(__name__)

#: calibration images when the data does not say: KL histograms of a segmentation model fill on far fewer images
#: than a classifier's (every image gives each activation thousands of values), and 100 images take a fifth of the
#: time of the ~500 that vendor toolchains suggest for classifiers; give more for a final model
DEFAULT_CALIBRATION_IMAGES = 100

#: the bias-correction errors ``"auto"`` chooses between, by the int8 model's output error
AUTO_BIAS_ERRORS = ("weights", "accumulated")


@dataclass(frozen=True)
class Outputs:
    """Where the workflow writes: the int8 ``model`` (with a TensorRT cache beside it for ``tensorrt``, and the
    equalized float model beside it when equalization ran), the calibration ``table``, the statistics
    (``stats``, ``.npz``), the calibration image ``ids`` and a TensorRT calibration cache (``trt_cache``)."""

    model: Path | None = None
    table: Path | None = None
    stats: Path | None = None
    ids: Path | None = None
    trt_cache: Path | None = None

    @classmethod
    def beside(cls, model: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> "Outputs":
        """Returns the default outputs of ``model``: ``MODEL_STEM.int8.onnx``, ``MODEL_STEM.calib.json`` and
        ``MODEL_STEM.stats.npz`` in ``out_dir`` (default: the model's folder), what ``fcnquant calibrate MODEL``
        writes; ``dataclasses.replace`` overrides single paths."""
        model = Path(model)
        folder = Path(out_dir) if out_dir is not None else model.parent
        stem = model.stem
        return cls(model=folder / f"{stem}.int8.onnx", table=folder / f"{stem}.calib.json",
                   stats=folder / f"{stem}.stats.npz")

    def __post_init__(self) -> None:
        for name in ("model", "table", "stats", "ids", "trt_cache"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, name, Path(v))


@dataclass(frozen=True)
class RecoverOptions:
    """Settings of single recovery passes (None: each pass's defaults)."""

    adaround: AdaRoundOptions | None = None
    scale_search: ScaleSearchOptions | None = None


@dataclass(frozen=True)
class FlowResult:
    """What :func:`calibrate` produced: statistics, table, the int8 model when one was emitted, what recovery did."""

    table: CalibrationTable | None
    stats: CalibrationStats
    plan: RecoveryPlan
    quantize: Any = None  # fcnquant.quantize.QuantizeResult, when an int8 model was emitted
    recovery: dict = field(default_factory=dict)  # per pass: what it did (JSON-ready)
    float_model: Path | None = None  # the float model the table belongs to (the equalized one, if written)
    seconds: dict = field(default_factory=dict)
    written: tuple[tuple[str, Path], ...] = ()  # (what, path) of every artifact written
    source: str = ""  # the dataset the statistics were collected on (empty for saved statistics)

    def to_dict(self) -> dict:
        """Returns a JSON-ready summary."""
        return {
            "plan": self.plan.to_dict(), "recovery": self.recovery,
            "quantize": self.quantize.to_dict() if self.quantize is not None else None,
            "float_model": str(self.float_model) if self.float_model else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "written": {k: str(v) for k, v in self.written},
        }


def equalized_model_path(out: str | os.PathLike[str]) -> Path:
    """Returns where the flow writes the equalized float model beside the int8 model ``out``
    (``m.int8.onnx`` -> ``m.int8.equalized.onnx``): the reference for per-layer comparisons."""
    out = Path(out)
    return out.with_name(out.stem + ".equalized.onnx")


def calibrate(
    model: str | os.PathLike[str] | None,
    data: DataConfig | str | os.PathLike[str] | None = None,
    quant: QuantConfig | None = None,
    run: RunConfig | Executor | None = None,
    plan: RecoveryPlan | None = None,
    *,
    outputs: Outputs | None = None,
    stats: CalibrationStats | None = None,
    shard: str | Shard | None = None,
    collect: CollectOptions | None = None,
    recover: RecoverOptions | None = None,
) -> FlowResult:
    """Returns the FlowResult of calibrating ``model`` and writing ``outputs``.

    ``data``: the calibration images (:class:`~fcnquant.data.DataConfig`; split ``train`` and
    :data:`DEFAULT_CALIBRATION_IMAGES` images unless it says otherwise). ``quant``: method, target and emission options. ``plan``: the recovery passes
    (``fcnquant.recover.resolve_plan``; default none beyond the target's rounding). ``stats``: statistics
    collected before (e.g. loaded with ``load_stats``) instead of a collection pass; ``shard`` ("i/n") collects
    one slice (then only the statistics make sense to write). Only the passes before emission run without
    ``outputs.model``; ``Outputs.beside(model)`` gives the int8 model, table and statistics beside the model. Every output is checked before any work and written after all of it.
    """
    data = DataConfig.of(data, split="train", num_images=DEFAULT_CALIBRATION_IMAGES)
    quant, run = quant or QuantConfig(), RunConfig.of(run)
    outputs, recover, collect = outputs or Outputs(), recover or RecoverOptions(), collect or CollectOptions()
    plan = _checked_plan(plan or RecoveryPlan(), quant, outputs, stats, shard, model)
    quant = quant.with_(pow2_rounding=plan.pow2_rounding)
    seconds: dict[str, float] = {}
    recovery: dict[str, Any] = {"passes": plan.names()}
    # staged beside the int8 model, so the final rename stays on one file system and TMPDIR's size does not matter
    stage_dir = outputs.model.parent if outputs.model is not None else None
    with tempfile.TemporaryDirectory(prefix=".fcnquant-flow-", dir=stage_dir) as tmp:
        tmp = Path(tmp)
        float_path = Path(model) if model is not None else None
        if plan.equalize:
            t0 = time.perf_counter()
            from fcnquant.recover.equalize import equalize as run_equalize

            log.info("recovery: cross-layer equalization of the float model")

            eq = run_equalize(float_path, tmp / "equalized.onnx", run=run)
            float_path = tmp / "equalized.onnx"
            recovery["equalize"] = _summary(eq)
            seconds["equalize"] = time.perf_counter() - t0
        source, taps = "", {}
        if stats is None:
            t0 = time.perf_counter()
            executor = run.resolved()
            dataset = data.open(model, progress=executor.progress)
            chosen = data.choose(dataset, progress=executor.progress)
            data = data.with_(root=dataset, ids=tuple(chosen))
            source = dataset.describe()
            stats, taps = collect_with_extra(float_path, data, run, collect, _tap_specs(float_path, plan, outputs),
                                             shard=shard)
            seconds["collect"] = time.perf_counter() - t0
        table = None
        if not shard or outputs.table or outputs.trt_cache:
            table = build_table(stats, quant.method, quant.target, pow2_rounding=plan.pow2_rounding,
                                **quant.method_params)
        result = None
        if outputs.model is not None:
            table, result = _emit(float_path, table, quant, plan, data, run, recover, recovery, seconds, tmp, taps)
        written = _write(outputs, stats, table, result, tmp, plan, float_path)
    log.info("flow: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    if result is not None:
        result = replace(result, path=outputs.model, tensorrt_cache=dict(written).get("TensorRT cache"),
                         size_bytes=outputs.model.stat().st_size)
    reference = dict(written).get("equalized float model", Path(model) if model is not None else None)
    return FlowResult(table, stats, plan, result, recovery, reference, seconds, tuple(written), source)


def _checked_plan(plan: RecoveryPlan, quant: QuantConfig, outputs: Outputs, stats, shard, model) -> RecoveryPlan:
    """Returns the plan to run: FcnquantError for combinations that cannot work, before any work."""
    from fcnquant.calibrate.qparams import get_target

    quant.check()  # a bad method, parameter or target fails before minutes of inference
    if plan.scale_search and not get_target(quant.target).pow2:
        raise FcnquantError(f"the power-of-two scale search needs a power-of-two target, not {quant.target}")
    makes_model = plan.equalize or plan.adaround or plan.bias_correction or plan.scale_search
    if outputs.model is None and makes_model:
        raise FcnquantError("equalization, AdaRound, the scale search and bias correction make a new model: "
                            "give `out` to emit the int8 model (or resolve the plan with emits=False)")
    if outputs.model is not None and shard is not None:
        raise FcnquantError("emitting the int8 model needs the full statistics, not one shard")
    if stats is not None and makes_model:
        raise FcnquantError("recovery passes need the calibration images: collect instead of using saved "
                            "statistics")
    if shard is not None and stats is not None:
        raise FcnquantError("a shard collects statistics: it does not combine with saved statistics")
    check_outputs({"model": outputs.model, "table": outputs.table, "stats": outputs.stats, "ids": outputs.ids,
                   "trt_cache": outputs.trt_cache})
    if outputs.model is not None and model is not None and Path(model).is_file():
        import onnx

        from fcnquant.quantize import check_emittable

        try:  # the graph alone (external weights are not read): a model emission refuses fails before inference
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # an unreadable file: the collection pass names it
            proto = None
        if proto is not None:
            check_emittable(proto, str(model), "calibrate")
    return plan


def _tap_specs(float_path: Path, plan: RecoveryPlan, outputs: Outputs) -> dict:
    """Returns the extra statistics the collection pass gathers for the fast bias correction ({} when it does not
    run): every Conv's input tap means on the float model, {(tensor, geometry): (tensor, factory)}."""
    if not (plan.bias_correction and plan.bias_correction_form == "fast" and outputs.model is not None
            and plan.bias_correction_error in ("weights", "auto")):
        return {}
    from fcnquant.recover.bias_correction import float_tap_accumulators

    return float_tap_accumulators(load_onnx(float_path))


def _emit(float_path: Path, table, quant: QuantConfig, plan: RecoveryPlan, data: DataConfig, run: RunConfig,
          recover: RecoverOptions, recovery: dict, seconds: dict, tmp: Path, taps: dict | None = None):
    """Runs AdaRound, emission, the scale search and bias correction into ``tmp``; returns (table, result).
    ``taps``: the float model's tap means from the collection pass (the fast bias correction's statistics)."""
    from fcnquant.quantize import quantize_model

    emit_from, weight_scales = float_path, None
    if plan.adaround:
        t0 = time.perf_counter()
        log.info("recovery: AdaRound")
        import onnx

        from fcnquant.recover.adaround import adaround as run_adaround

        ada = run_adaround(float_path, table, data, quant, run, recover.adaround)
        emit_from = tmp / "adarounded.onnx"
        onnx.save_model(ada.model, str(emit_from))
        weight_scales = ada.weight_scales
        recovery["adaround"] = _summary(ada)
        seconds["adaround"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if plan.pow2_rounding != "up":
        recovery["pow2_rounding"] = plan.pow2_rounding
    staged = tmp / "int8.onnx"
    # the staged model is checked once, when it is written (``_write_each``)
    result = quantize_model(emit_from, table, staged, quant, weight_scales=weight_scales,
                            verify_table=emit_from == float_path, check=False)
    seconds["emit"] = time.perf_counter() - t0

    if plan.scale_search:
        t0 = time.perf_counter()
        log.info("recovery: power-of-two scales by output error")
        from fcnquant.recover.scale_search import search_activation_scales

        ss = search_activation_scales(staged, emit_from, table, data, run, recover.scale_search)
        recovery["scale_search"] = ss.to_dict()
        if ss.changes:
            table = ss.table
            result = quantize_model(emit_from, table, staged, quant, weight_scales=weight_scales,
                                    verify_table=emit_from == float_path, check=False)
        seconds["scale_search"] = time.perf_counter() - t0

    if plan.bias_correction:
        t0 = time.perf_counter()
        log.info("recovery: bias correction (%s)", plan.bias_correction_form if plan.bias_correction_error != "accumulated"
                 else "sequential")
        # AdaRound changes the weights but not the float model's activations, which the tap means are of
        bc, chosen_error, scores = _corrected(staged, float_path, data, run, plan.bias_correction_error,
                                              plan.bias_correction_form, taps)
        recovery["bias_correction"] = {k: v for k, v in bc.to_dict().items() if k != "layers"}
        recovery["bias_correction"]["layers"] = len(bc.layers)
        recovery["bias_correction"]["error"] = chosen_error
        recovery["bias_correction"]["form"] = "fast" if bc.schedule == "fast" else "sequential"
        if scores:
            recovery["bias_correction"]["output_mse"] = scores
        _save_with_metadata(bc.model, staged, recovery)
        seconds["bias_correction"] = time.perf_counter() - t0
    elif plan.any:
        _save_with_metadata(load_onnx(staged), staged, recovery)
    return table, result


def _write(outputs: Outputs, stats: CalibrationStats, table, result, tmp: Path, plan: RecoveryPlan,
           float_path: Path | None) -> list[tuple[str, Path]]:
    """Writes every requested artifact, all of them or none; returns (what, path) of each."""
    with all_or_nothing():
        return _write_each(outputs, stats, table, result, tmp, plan, float_path)


def _write_each(outputs: Outputs, stats: CalibrationStats, table, result, tmp: Path, plan: RecoveryPlan,
                float_path: Path | None) -> list[tuple[str, Path]]:
    from fcnquant.data import save_ids

    written: list[tuple[str, Path]] = []
    if outputs.model is not None:
        with written_model(outputs.model) as final:
            shutil.copyfile(tmp / "int8.onnx", final)
        written.append(("int8 model", outputs.model))
        if result is not None and result.tensorrt_cache is not None:
            from fcnquant.quantize import tensorrt_cache_path

            cache = tensorrt_cache_path(outputs.model)
            with atomic_path(cache) as final_cache:
                shutil.copyfile(result.tensorrt_cache, final_cache)
            written.append(("TensorRT cache", cache))
        if plan.equalize:
            written.append(("equalized float model", _keep_equalized(float_path, outputs.model)))
    if outputs.stats is not None:
        stats.save(outputs.stats)
        written.append(("statistics", outputs.stats))
    if outputs.ids is not None:
        save_ids(outputs.ids, stats.image_ids)
        written.append(("image ids", outputs.ids))
    if table is not None and outputs.table is not None:
        table.save(outputs.table)
        written.append(("table", outputs.table))
    if table is not None and outputs.trt_cache is not None:
        table.write_tensorrt_cache(outputs.trt_cache)
        written.append(("TensorRT calibration cache", outputs.trt_cache))
    return written


def _corrected(staged: Path, float_path: Path, data: DataConfig, run: RunConfig, error: str, form: str = "fast",
               taps: dict | None = None):
    """Returns (BiasCorrectionResult, the error mode used, {mode: output MSE} when ``error`` is ``"auto"``).

    ``form`` (``"fast"`` or ``"sequential"``) applies to the ``"weights"`` error; the others run sequentially.
    ``taps``: the fast form's statistics of the float model, collected already (no pass of its own).
    ``"auto"``: both ``"weights"`` and ``"accumulated"`` corrections, the one whose int8 model's outputs are
    closer to the float model's on the calibration images (``fcnquant.recover.scale_search.output_error``) kept.
    """
    from fcnquant.recover.bias_correction import BiasCorrectionOptions, correct_biases

    def options(e: str) -> BiasCorrectionOptions:
        return BiasCorrectionOptions(error=e, form=form if e == "weights" else None)

    if error != "auto":
        return correct_biases(staged, float_path, data, run, options(error), tap_means=taps), error, {}
    from fcnquant.recover.scale_search import output_error

    modes = AUTO_BIAS_ERRORS
    results = [correct_biases(staged, float_path, data, run, options(m), tap_means=taps) for m in modes]
    errs = output_error([r.model for r in results], float_path, data, run, images=None)
    best = int(np.argmin(errs))
    log.info("bias correction: output MSE %s; keeping %s", ", ".join(f"{m} {e:.4g}" for m, e in zip(modes, errs)),
             modes[best])
    return results[best], modes[best], {m: e for m, e in zip(modes, errs)}


def _summary(result) -> dict:
    """Returns a pass's record without its model and without where the workflow staged files."""
    d = result.to_dict() if hasattr(result, "to_dict") else {}
    return {k: v for k, v in d.items() if k not in ("model", "path")}


def _keep_equalized(float_path: Path, out) -> Path:
    """Writes the equalized float model beside the int8 model ``out``; returns its path."""
    dest = equalized_model_path(out)
    with atomic_path(dest) as tmp:
        shutil.copyfile(float_path, tmp)
    log.info("wrote the equalized float model %s (compare per-layer drift against it)", dest)
    return dest


def _save_with_metadata(model, path: Path, recovery: dict) -> None:
    import onnx

    from fcnquant.quantize.name_map import set_metadata

    set_metadata(model, {RECOVERY_METADATA_KEY: json.dumps(recovery, sort_keys=True)})
    onnx.save_model(model, str(path))
