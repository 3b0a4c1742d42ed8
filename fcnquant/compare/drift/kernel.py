"""The compiled drift sums: the five sums and the max behind ``DriftMetrics`` in one pass, float64.

``drift_sums(ref, test)`` returns ``(sum e^2, sum r^2, sum q^2, sum r q, max |e|)`` with ``e = q - r`` formed
exactly in float64 for float32 inputs, summed in float64 in four interleaved partial sums (so the sums agree with
numpy's to rounding, ~1e-15 relative, not bit for bit; the same bits on every machine). Any NaN/Inf input makes
``sum e^2`` non-finite; the caller then uses the numpy path, which drops such pairs and counts them.
``drift_sums_codes(ref, codes, zero_point, scale)`` takes the test side as a DequantizeLinear's integer input
(int8, uint8, int16, uint16 or int32) and dequantizes each value on the fly, ``float32(int(code) - zero_point) *
scale`` as DequantizeLinear computes it (``fcnquant.compare.tensors.integer_taps``): one pass instead of four over
the activation. Both live in the C extension ``fcnquant._native`` (:mod:`fcnquant.observers.kernel` says when it
is there); None when it is not, and numpy runs.
"""
from __future__ import annotations

from typing import Callable

from fcnquant.observers.kernel import NATIVE

Sums = tuple[float, float, float, float, float]

#: ``drift_sums(ref, test)`` of two flat C-contiguous float32 arrays, or None without the compiled kernels
drift_sums: Callable[..., Sums] | None = NATIVE.drift_sums if NATIVE is not None else None
#: ``drift_sums_codes(ref, codes, zero_point, scale)``, or None without the compiled kernels
drift_sums_codes: Callable[..., Sums] | None = NATIVE.drift_sums_codes if NATIVE is not None else None

__all__ = ["drift_sums", "drift_sums_codes"]
