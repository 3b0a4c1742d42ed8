"""Target profiles and the arithmetic from a clipping range to a quantization scale and zero point.

Targets (:data:`TARGETS`, read from the files in ``fcnquant.targets``; a target file may declare its own):

* ``ort-cpu``: onnxruntime CPU QDQ. Activations uint8 asymmetric: the range is first widened to contain 0
  (``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``), ``scale = (hi' - lo') / 255``,
  ``zero_point = clamp(round(-lo' / scale), 0, 255)`` (an integer, so 0.0 is exactly representable; ReLU outputs
  get ``zero_point = 0``, ``scale = hi / 255``). Weights int8 symmetric per channel.
* ``tensorrt``: int8 symmetric, ``zero_point = 0``, ``scale = amax / 127`` with ``amax = max(|lo|, |hi|)``.
* ``npu-pow2``: int8 symmetric, ``scale = 2**ceil(log2(amax / 127))``: rounded *up* to a power of two, so the
  threshold is never clipped further (shift-only requantization).

Scales are returned as float32-representable Python floats (what ONNX stores). A range whose scale would be
smaller than :data:`MIN_SCALE` (= 2**-24, the smallest float16 subnormal; in particular a constant-zero tensor,
``lo == hi == 0``) gets ``MIN_SCALE``: 0 stays exact, every observed value (all ``< 127 * 2**-24``) is still
representable, and the scale is a positive power of two that float16/float32 and shift-based targets hold exactly.
"""
from __future__ import annotations

import math

import numpy as np

from fcnquant.errors import CalibrationError
from fcnquant.targets import TARGETS, Target, get_target

MIN_SCALE = 2.0 ** -24

# the targets moved to fcnquant.targets (TOML files); these names stay importable from here
__all__ = ["MIN_SCALE", "TARGETS", "Target", "get_target", "pow2_ceil", "qparams"]


def _f32(v: float) -> float:
    return float(np.float32(v))


def pow2_ceil(v: float) -> float:
    """Returns the smallest power of two ``>= v`` (``v > 0``), exactly."""
    mant, exp = math.frexp(v)  # v = mant * 2**exp, 0.5 <= mant < 1
    return math.ldexp(1.0, exp - 1) if mant == 0.5 else math.ldexp(1.0, exp)


def qparams(lo: float, hi: float, target: str | Target) -> tuple[float, int]:
    """Returns ``(scale, zero_point)`` quantizing the range ``[lo, hi]`` on ``target`` (formulas in the module doc).

    Raises CalibrationError for a NaN/infinite or reversed range.
    """
    t = get_target(target)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise CalibrationError(f"invalid range [{lo}, {hi}]")
    if t.symmetric:
        amax = max(abs(lo), abs(hi))
        scale = amax / t.qmax
        if t.pow2:
            scale = pow2_ceil(max(scale, MIN_SCALE))
        scale = max(_f32(scale), MIN_SCALE)
        return scale, 0
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    scale = max(_f32((hi0 - lo0) / (t.qmax - t.qmin)), MIN_SCALE)
    zp = int(round(t.qmin - lo0 / scale))
    return scale, min(max(zp, t.qmin), t.qmax)


#: the integer widths an activation may be quantized to
ACTIVATION_BITS = (8, 16)
INT16_QMAX = 32767


def qparams_bits(lo: float, hi: float, target: str | Target, bits: int = 8) -> tuple[float, int]:
    """Returns ``(scale, zero_point)`` quantizing ``[lo, hi]`` on ``target`` with ``bits``-bit activations.

    8 bits: exactly :func:`qparams`. 16 bits: symmetric int16 on every target (an asymmetric uint8 target too:
    onnxruntime's int16 QDQ kernels take a signed zero point of 0, and 65535 steps leave no need for an offset),
    ``scale = amax / 32767`` (rounded up to a power of two on a power-of-two target), ``zero_point = 0``, with the
    same :data:`MIN_SCALE` floor. Raises CalibrationError for an unsupported width or an invalid range.
    """
    if bits == 8:
        return qparams(lo, hi, target)
    if bits != 16:
        raise CalibrationError(f"activations are quantized to {' or '.join(map(str, ACTIVATION_BITS))} bits, "
                               f"not {bits}")
    t = get_target(target)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise CalibrationError(f"invalid range [{lo}, {hi}]")
    scale = max(abs(lo), abs(hi)) / INT16_QMAX
    if t.pow2:
        scale = pow2_ceil(max(scale, MIN_SCALE))
    return max(_f32(scale), MIN_SCALE), 0
