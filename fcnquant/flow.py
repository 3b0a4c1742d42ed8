"""The one-shot flow: collect statistics -> recovery passes -> emit the int8 model, in one call.

This module sits above ``fcnquant.calibrate`` (statistics, tables), ``fcnquant.recover`` (equalization, AdaRound,
bias correction) and ``fcnquant.quantize`` (QDQ emission); none of them imports it, so each stays usable and
testable on its own. Order of the passes, each optional (``fcnquant.recover.plan``):

1. cross-layer equalization of the float model (function-preserving; the statistics are collected on the
   equalized model, whose per-channel ranges are what the int8 model will see);
2. one collection pass and the calibration table (power-of-two scales by expected error where asked);
3. AdaRound: each Conv's int8 weights rounded to minimise its output error (a float model whose weights lie on
   the int8 grid, emitted with exactly those scales);
4. emission (``fcnquant.quantize.quantize_model``);
4b. power-of-two targets, with ``scale_search=True`` (opt-in): each activation's power-of-two scale re-chosen by
   the int8 model's output error on calibration images (``fcnquant.recover.scale_search``), and the model emitted
   again with those scales;
5. empirical bias correction of the emitted model against the (equalized) float model (``bias_correction_error``:
   ``"weights"``, ``"accumulated"`` or ``"auto"``, the one of the two with the smaller output error).

What ran is recorded in the int8 model's metadata (``fcnquant.recovery``), shown by ``fcnquant compare``.
Nothing is written at ``out`` until every step has succeeded.
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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fcnquant._io import atomic_path, load_onnx
from fcnquant.calibrate.api import choose_ids, compute_table, open_calibration_data
from fcnquant.calibrate.collect import collect_stats
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable
from fcnquant.errors import FcnquantError
from fcnquant.recover.plan import RECOVERY_METADATA_KEY, RecoveryPlan, resolve_plan

log = logging.getLogger(__name__)

#: the bias-correction errors ``"auto"`` chooses between, by the int8 model's output error
AUTO_BIAS_ERRORS = ("weights", "accumulated")


@dataclass(frozen=True)
class FlowResult:
    """What :func:`calibrate` produced: the table and statistics, and the int8 model when ``out`` was given."""

    table: CalibrationTable
    stats: CalibrationStats
    plan: RecoveryPlan
    quantize: Any = None  # fcnquant.quantize.QuantizeResult, when an int8 model was emitted
    recovery: dict = field(default_factory=dict)  # per pass: what it did (JSON-ready)
    float_model: Path | None = None  # the float model the table belongs to (the equalized one, if written)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Returns a JSON-ready summary."""
        return {
            "plan": self.plan.to_dict(), "recovery": self.recovery,
            "quantize": self.quantize.to_dict() if self.quantize is not None else None,
            "float_model": str(self.float_model) if self.float_model else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def equalized_model_path(out: str | os.PathLike[str]) -> Path:
    """Returns where the flow writes the equalized float model beside the int8 model ``out``
    (``m.int8.onnx`` -> ``m.int8.equalized.onnx``): the reference for per-layer comparisons."""
    out = Path(out)
    return out.with_name(out.stem + ".equalized.onnx")


def calibrate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str | None = "train",
    method: str = "kl",
    num_images: int | None = 500,
    seed: int = 0,
    balanced: bool = False,
    preset=None,
    target: str = "ort-cpu",
    batch_size: int = 1,
    params: Mapping[str, Any] | None = None,
    ids: Sequence[str] | None = None,
    progress: bool = True,
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    skip_nonfinite: bool = False,
    out: str | os.PathLike[str] | None = None,
    per_channel: bool = True,
    quantize_output: bool = False,
    exclude_nodes: Iterable[str] = (),
    exclude_ops: Iterable[str] = (),
    exclude_regex: str | Iterable[str] | None = None,
    recover: bool = False,
    equalize: bool | None = None,
    bias_correction: bool | None = None,
    adaround: bool | None = None,
    pow2_rounding: str | None = None,
    scale_search: bool | None = None,
    scale_search_options: Mapping[str, Any] | None = None,
    bias_correction_error: str | None = None,
    adaround_iterations: int | None = None,
    ann_dir: str | None = None,
    dataset=None,
) -> FlowResult:
    """Returns the FlowResult of calibrating ``model`` and, with ``out``, emitting its int8 model there.

    Images, method and target as in ``fcnquant.calibrate.calibrate``; emission options as in
    ``fcnquant.quantize.quantize_model``. ``recover=True`` turns on every recovery pass that helps on the target
    (``fcnquant.recover.plan``); ``equalize``, ``bias_correction``, ``adaround`` and ``pow2_rounding`` set single
    passes (``True``/``False``/``"up"``/``"error"``; None = as ``recover`` decides). Without ``out`` only the
    passes before emission run (the table's power-of-two rounding). ``dataset``: an opened
    ``fcnquant.data.Dataset`` to use instead of ``data`` / ``split`` / ``ann_dir``.
    """
    from fcnquant.calibrate.methods import resolve_params
    from fcnquant.calibrate.qparams import get_target

    exclude_nodes, exclude_ops = list(exclude_nodes), list(exclude_ops)
    if exclude_regex is not None and not isinstance(exclude_regex, str):
        exclude_regex = list(exclude_regex)
    resolve_params(method, **dict(params or {}))  # fail on bad options before minutes of inference
    get_target(target)
    plan = resolve_plan(target, per_channel, recover, equalize=equalize, bias_correction=bias_correction,
                        adaround=adaround, pow2_rounding=pow2_rounding, scale_search=scale_search,
                        bias_correction_error=bias_correction_error)
    if plan.scale_search and not get_target(target).pow2:
        raise FcnquantError(f"the power-of-two scale search needs a power-of-two target, not {target}")
    if out is None:
        if equalize or adaround or bias_correction or scale_search:
            raise FcnquantError("equalization, AdaRound, the scale search and bias correction make a new model: "
                                "give `out` to emit "
                                "the int8 model (or run `fcnquant equalize` first and calibrate its output)")
        plan = replace(plan, equalize=False, adaround=False, bias_correction=False, scale_search=False)
    else:
        out_dir = Path(out).parent if str(Path(out).parent) else Path(".")
        if not out_dir.is_dir():
            raise FcnquantError(f"output folder does not exist: {out_dir}")
    model = Path(model)
    if dataset is None:
        dataset = open_calibration_data(data, split, progress=progress, model=model, ann_dir=ann_dir)
    chosen = choose_ids(dataset, num_images, seed, balanced, ids, progress=progress)
    seconds: dict[str, float] = {}
    recovery: dict[str, Any] = {"passes": plan.names()}

    with tempfile.TemporaryDirectory(prefix="fcnquant-flow-") as tmp:
        tmp = Path(tmp)
        float_path = model
        if plan.equalize:
            t0 = time.perf_counter()
            from fcnquant.recover.equalize import equalize as run_equalize

            eq = run_equalize(model, tmp / "equalized.onnx")
            float_path = tmp / "equalized.onnx"
            recovery["equalize"] = _summary(eq)
            seconds["equalize"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats = collect_stats(float_path, dataset, chosen, preset, batch_size, size=size, mean=mean, std=std,
                              skip_nonfinite=skip_nonfinite, progress=progress)
        seconds["collect"] = time.perf_counter() - t0
        table = compute_table(stats, method, target, pow2_rounding=plan.pow2_rounding, **dict(params or {}))
        if out is None:
            return FlowResult(table, stats, plan, None, recovery, model, seconds)

        emit_from, weight_scales = float_path, None
        if plan.adaround:
            t0 = time.perf_counter()
            from fcnquant.recover.adaround import adaround as run_adaround

            from fcnquant.quantize.exclude import name_unnamed_nodes, resolve_exclusions

            kwargs = {} if adaround_iterations is None else {"iterations": adaround_iterations}
            named = load_onnx(float_path)
            name_unnamed_nodes(named)  # the names emission gives unnamed nodes, so exclusions resolve alike
            floated = resolve_exclusions(named, exclude_nodes, exclude_ops, exclude_regex)
            ada = run_adaround(float_path, table, target, per_channel=per_channel, dataset=dataset, ids=chosen,
                               preset=preset, progress=progress, exclude_nodes=floated,
                               pow2_rounding=plan.pow2_rounding, **kwargs)
            import onnx

            emit_from = tmp / "adarounded.onnx"
            onnx.save_model(ada.model, str(emit_from))
            weight_scales = ada.weight_scales
            recovery["adaround"] = _summary(ada)
            seconds["adaround"] = time.perf_counter() - t0

        from fcnquant.quantize import quantize_model, tensorrt_cache_path

        t0 = time.perf_counter()
        if plan.pow2_rounding != "up":
            recovery["pow2_rounding"] = plan.pow2_rounding
        staged = tmp / Path(out).name
        result = quantize_model(
            emit_from, table, staged, target=target, per_channel=per_channel, quantize_output=quantize_output,
            exclude_nodes=exclude_nodes, exclude_ops=exclude_ops, exclude_regex=exclude_regex,
            weight_scales=weight_scales, pow2_rounding=plan.pow2_rounding, verify_table=emit_from == float_path)
        seconds["emit"] = time.perf_counter() - t0

        if plan.scale_search:
            t0 = time.perf_counter()
            from fcnquant.recover.scale_search import search_activation_scales

            ss = search_activation_scales(staged, emit_from, table, dataset, chosen, preset, size=size, mean=mean,
                                          std=std, **dict(scale_search_options or {}))
            recovery["scale_search"] = ss.to_dict()
            if ss.changes:
                table = ss.table
                result = quantize_model(
                    emit_from, table, staged, target=target, per_channel=per_channel,
                    quantize_output=quantize_output, exclude_nodes=exclude_nodes, exclude_ops=exclude_ops,
                    exclude_regex=exclude_regex, weight_scales=weight_scales, pow2_rounding=plan.pow2_rounding,
                    verify_table=emit_from == float_path)
            seconds["scale_search"] = time.perf_counter() - t0

        if plan.bias_correction:
            t0 = time.perf_counter()
            bc = _corrected(staged, float_path, dataset, chosen, preset, plan.bias_correction_error,
                            dict(batch_size=batch_size, size=size, mean=mean, std=std, progress=progress))
            bc, chosen_error, scores = bc
            recovery["bias_correction"] = {k: v for k, v in bc.to_dict().items() if k != "layers"}
            recovery["bias_correction"]["layers"] = len(bc.layers)
            recovery["bias_correction"]["error"] = chosen_error
            if scores:
                recovery["bias_correction"]["output_mse"] = scores
            _save_with_metadata(bc.model, staged, recovery)
            seconds["bias_correction"] = time.perf_counter() - t0
        elif plan.any:
            _save_with_metadata(load_onnx(staged), staged, recovery)

        with atomic_path(out) as final:
            shutil.copyfile(staged, final)
        kept = _keep_equalized(float_path, out) if plan.equalize else None
        cache = None
        if result.tensorrt_cache is not None:
            cache = tensorrt_cache_path(out)
            with atomic_path(cache) as final_cache:
                shutil.copyfile(result.tensorrt_cache, final_cache)
        result = replace(result, path=Path(out), tensorrt_cache=cache, size_bytes=Path(out).stat().st_size)
    log.info("flow: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return FlowResult(table, stats, plan, result, recovery, kept or model, seconds)


def _corrected(staged: Path, float_path: Path, dataset, ids, preset, error: str, kwargs: dict):
    """Returns (BiasCorrectionResult, the error mode used, {mode: output MSE} when ``error`` is ``"auto"``).

    ``"auto"``: both ``"weights"`` and ``"accumulated"`` corrections, the one whose int8 model's outputs are
    closer to the float model's on the calibration images (``fcnquant.recover.scale_search.output_error``) kept.
    """
    from fcnquant.recover.bias_correction import correct_biases

    if error != "auto":
        return correct_biases(staged, float_path, dataset, ids, preset, error=error, **kwargs), error, {}
    from fcnquant.recover.scale_search import output_error

    modes = AUTO_BIAS_ERRORS
    results = [correct_biases(staged, float_path, dataset, ids, preset, error=m, **kwargs) for m in modes]
    errs = output_error([r.model for r in results], float_path, dataset, ids, preset, images=None,
                        size=kwargs.get("size"), mean=kwargs.get("mean"), std=kwargs.get("std"))
    best = int(np.argmin(errs))
    log.info("bias correction: output MSE %s; keeping %s", ", ".join(f"{m} {e:.4g}" for m, e in zip(modes, errs)),
             modes[best])
    return results[best], modes[best], {m: e for m, e in zip(modes, errs)}


def _summary(result) -> dict:
    d = result.to_dict() if hasattr(result, "to_dict") else {}
    return {k: v for k, v in d.items() if k != "model"}


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
