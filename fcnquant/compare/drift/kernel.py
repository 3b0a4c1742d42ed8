"""The compiled drift kernel (numba): the five sums and the max behind ``DriftMetrics`` in one pass, float64.

``drift_sums(ref, test)`` returns ``(sum e^2, sum r^2, sum q^2, sum r q, max |e|)`` with ``e = q - r`` formed
exactly in float64 for float32 inputs, summed in float64 (the order of the additions is left to the compiler, so
the sums agree with numpy's to rounding, ~1e-15 relative, not bit for bit). Any NaN/Inf input makes
``sum e^2`` non-finite; the caller then uses the numpy path, which drops such pairs and counts them.
``CODES_KERNEL(ref, codes, zero_point, scale)`` takes the test side as a DequantizeLinear's integer input and
dequantizes each value on the fly (``fcnquant.compare.tensors.integer_taps``): one pass instead of four over the
activation. Disabled, like the observer kernels, when numba is missing or ``FCNQUANT_NO_NUMBA=1``.
"""
from __future__ import annotations

import numpy as np

from fcnquant.observers.kernel import DISABLE_ENV, numba_jit


def _drift_sums_py(r, t):
    se = 0.0
    sr = 0.0
    st = 0.0
    sd = 0.0
    mx = 0.0
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(t[i])
        e = b - a
        se += e * e
        sr += a * a
        st += b * b
        sd += a * b
        ae = abs(e)
        mx = ae if ae > mx else mx
    return se, sr, st, sd, mx


def _drift_sums_codes_py(r, codes, zero_point, scale):
    """The same sums against the dequantized ``codes``: ``float32(int(code) - zero_point) * scale`` (float32, as
    DequantizeLinear computes it), then widened exactly to float64."""
    se = 0.0
    sr = 0.0
    st = 0.0
    sd = 0.0
    mx = 0.0
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(np.float32(np.int32(codes[i]) - zero_point) * scale)
        e = b - a
        se += e * e
        sr += a * a
        st += b * b
        sd += a * b
        ae = abs(e)
        mx = ae if ae > mx else mx
    return se, sr, st, sd, mx


KERNEL = numba_jit(_drift_sums_py, fastmath={"reassoc", "nsz"})
CODES_KERNEL = numba_jit(_drift_sums_codes_py, fastmath={"reassoc", "nsz"})

__all__ = ["CODES_KERNEL", "KERNEL", "DISABLE_ENV", "drift_sums"]


def drift_sums(ref: np.ndarray, test: np.ndarray) -> tuple[float, float, float, float, float]:
    """Returns (sum e^2, sum r^2, sum q^2, sum r q, max |e|) of two flat float32 arrays (RuntimeError without
    the compiled kernel)."""
    if KERNEL is None:
        raise RuntimeError("the compiled drift kernel is not available (numba missing or disabled)")
    se, sr, st, sd, mx = KERNEL(ref, test)
    return float(se), float(sr), float(st), float(sd), float(mx)
