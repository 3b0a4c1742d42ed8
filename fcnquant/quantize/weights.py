"""Weight quantization parameters: symmetric int8 scales per output channel or per tensor (numpy only).

For a weight ``w`` and a channel axis ``a``, channel ``c`` gets ``scale_c = max|w[..c..]| / 127`` and zero
point 0, so ``round(w / scale_c)`` lies in [-127, 127] and no weight is clipped. With ``pow2=True`` the scale
is rounded *up* to a power of two, ``2 ** ceil(log2(max|w| / 127))``, which keeps the no-clip property (a
fixed-point accelerator shifts instead of multiplying). An all-zero channel gets scale 1 (any positive
scale represents it exactly).

Worked example: ``max|w| = 0.5`` gives ``0.5 / 127 = 0.003937``. ``2 ** -8 = 0.00390625`` is just below it,
so the power-of-two scale is ``2 ** -7 = 0.0078125`` and the weight 0.5 quantizes to 64.
"""
from __future__ import annotations

import numpy as np

from fcnquant.calibrate.qparams import pow2_ceil

QMAX_INT8 = 127


def symmetric_scales(w: np.ndarray, axis: int | None, pow2: bool = False) -> np.ndarray:
    """Returns the symmetric int8 scales of ``w``: shape ``(w.shape[axis],)`` per channel, or ``()`` per tensor.

    ``axis=None`` means one scale for the whole tensor. The result is float32.
    """
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.asarray(np.abs(w).max() if w.size else 0.0)
    else:
        axis = axis % w.ndim
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=other) if w.size else np.zeros(w.shape[axis])
    raw = amax / QMAX_INT8
    scale = np.where(raw > 0, raw, 1.0)  # an all-zero channel: any positive scale is exact
    if pow2:
        scale = np.array([pow2_ceil(float(v)) for v in np.ravel(scale)]).reshape(np.shape(scale))
    return scale.astype(np.float32)
