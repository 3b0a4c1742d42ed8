"""Runs onnxruntime's QDQ quantizer with scales decided by fcnquant instead of its own calibration.

The public route used here: ``quantize_static(..., calibration_cache_path=PATH)`` (onnxruntime >= 1.32) reads
tensor ranges from a JSON file written by ``onnxruntime.quantization.save_tensors_data`` and skips calibration.
Every activation also gets an exact ``scale`` / ``zero_point`` through ``extra_options["TensorQuantOverrides"]``,
so onnxruntime uses the table's numbers unchanged; the ranges in the cache only tell it which tensors it may
quantize. Weights get per-channel (or per-tensor) overrides only where onnxruntime's own rule would differ
(power-of-two scales).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from fcnquant.errors import CalibrationError, ModelError
from fcnquant.quantize.profiles import Profile

log = logging.getLogger(__name__)

#: the oldest onnxruntime whose quantize_static takes calibration_cache_path
MIN_ORT_VERSION = "1.32"


@dataclass
class OrtJob:
    """Everything handed to onnxruntime's quantizer for one model."""

    profile: Profile
    per_channel: bool
    activations: dict[str, tuple[float, int]]  # tensor -> (scale, zero point)
    weights: dict[str, tuple[np.ndarray, int | None]] = field(default_factory=dict)  # name -> (scales, axis)
    nodes_to_exclude: list[str] = field(default_factory=list)
    fixed_weight_scales: bool = False  # the given weight scales must not be enlarged for the int32 bias
    int16: frozenset[str] = frozenset()  # activations quantized to symmetric int16 (the model is at opset 21)


def _check_version() -> None:
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise ModelError(
            f"onnxruntime {onnxruntime.__version__} is too old: fcnquant quantize needs onnxruntime >= "
            f"{MIN_ORT_VERSION} (quantize_static with calibration_cache_path)"
        )


class _DropOrtAdvice(logging.Filter):
    """Drops onnxruntime's root-logger advice to run its pre-processing (fcnquant deliberately does not)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Please consider")


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Filters onnxruntime's advice; a NullHandler stops its ``logging.warning`` from configuring the root logger."""
    root = logging.getLogger()
    flt = _DropOrtAdvice()
    null = logging.NullHandler() if not root.handlers else None
    root.addFilter(flt)
    if null is not None:
        root.addHandler(null)
    try:
        yield
    finally:
        root.removeFilter(flt)
        if null is not None:
            root.removeHandler(null)


def run_quantize_static(model_path: Path, out_path: Path, cache_path: Path, job: OrtJob) -> None:
    """Writes onnxruntime's QDQ model of ``model_path`` to ``out_path`` using the job's scales.

    ``cache_path`` is where the range file for onnxruntime is written (a temporary file of the caller).
    """
    _check_version()
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        TensorData,
        TensorsData,
        quantize_static,
        save_tensors_data,
    )

    prof = job.profile
    act_type = QuantType.QUInt8 if prof.activation_dtype == "uint8" else QuantType.QInt8
    act_np = np.uint8 if prof.activation_dtype == "uint8" else np.int8
    qmin, qmax = prof.activation_qrange

    ranges = {}
    overrides: dict[str, list[dict]] = {}
    for name, (scale, zp) in job.activations.items():
        if name in job.int16:
            ranges[name] = TensorData(lowest=np.float32(-32768 * scale), highest=np.float32(32767 * scale))
            overrides[name] = [{"quant_type": QuantType.QInt16, "scale": np.array(scale, np.float32),
                                "zero_point": np.array(zp, np.int16)}]
            continue
        lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
        ranges[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        overrides[name] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zp, act_np)}]
    for name, (scales, axis) in job.weights.items():
        if axis is None:
            overrides[name] = [{"scale": np.array(float(scales), np.float32), "zero_point": np.array(0, np.int8)}]
        else:
            overrides[name] = [
                {"axis": axis, "scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8)} for s in scales
            ]
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache_path)

    extra = {
        "ActivationSymmetric": prof.symmetric,
        "WeightSymmetric": True,
        "TensorQuantOverrides": overrides,
        # power-of-two (or otherwise fixed) weight scales must not be enlarged by onnxruntime's int32-bias adjustment
        "QDQDisableWeightAdjustForInt32Bias": job.fixed_weight_scales,
    }
    if job.int16 and not prof.symmetric:
        # an asymmetric target folds each Relu into its output's zero point; a symmetric int16 output cannot clip
        # at 0, so the Relus stay (a uint8 Relu kept between two equal grids computes the same values)
        extra["QDQKeepRemovableActivations"] = True
    try:
        with _quiet_ort():
            quantize_static(
                str(model_path),
                str(out_path),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=job.per_channel,
                reduce_range=False,
                activation_type=act_type,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(job.nodes_to_exclude),
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache_path),
                extra_options=extra,
            )
    except ValueError as exc:
        msg = str(exc)
        if "Quantization parameters are not specified" in msg:
            raise CalibrationError(f"the calibration table has no range for a tensor the QDQ graph needs: {msg}") from exc
        raise ModelError(f"onnxruntime's QDQ quantizer failed: {msg}") from exc
