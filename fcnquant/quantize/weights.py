"""Weight quantization parameters: symmetric int8 scales per output channel or per tensor (numpy only).

For a weight ``w`` and a channel axis ``a``, channel ``c`` gets ``scale_c = max|w[..c..]| / 127`` and zero
point 0, so ``round(w / scale_c)`` lies in [-127, 127] and no weight is clipped. With ``pow2=True`` the scale
is rounded *up* to a power of two, ``2 ** ceil(log2(max|w| / 127))``, which keeps the no-clip property (a
fixed-point accelerator shifts instead of multiplying). With ``pow2_rounding="error"`` each channel instead gets
whichever of the two neighbouring powers of two quantizes its weights with the smaller squared error (the
smaller one clips the largest weights to 127 steps; see ``fcnquant.calibrate.pow2``). An all-zero channel gets
scale 1 (any positive scale represents it exactly).

Worked example: ``max|w| = 0.5`` gives ``0.5 / 127 = 0.003937``. ``2 ** -8 = 0.00390625`` is just below it,
so the power-of-two scale is ``2 ** -7 = 0.0078125`` and the weight 0.5 quantizes to 64.
"""
from __future__ import annotations

import numpy as np

from fcnquant.calibrate.pow2 import POW2_ROUNDING, choose_pow2_scales_exact
from fcnquant.calibrate.qparams import pow2_ceil
from fcnquant.errors import CalibrationError

QMAX_INT8 = 127
#: the weight input's channel axis per op type for per-channel scales (other weighted ops: per tensor)
CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def symmetric_scales(w: np.ndarray, axis: int | None, pow2: bool = False, pow2_rounding: str = "up") -> np.ndarray:
    """Returns the symmetric int8 scales of ``w``: shape ``(w.shape[axis],)`` per channel, or ``()`` per tensor.

    ``axis=None`` means one scale for the whole tensor. ``pow2_rounding`` (``"up"`` or ``"error"``) applies with
    ``pow2=True``. The result is float32.
    """
    if pow2_rounding not in POW2_ROUNDING:
        raise CalibrationError(f"pow2_rounding must be one of {', '.join(POW2_ROUNDING)}, got {pow2_rounding!r}")
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.asarray(np.abs(w).max() if w.size else 0.0)
    else:
        axis = axis % w.ndim
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=other) if w.size else np.zeros(w.shape[axis])
    raw = amax / QMAX_INT8
    scale = np.where(raw > 0, raw, 1.0)  # an all-zero channel: any positive scale is exact
    if pow2 and pow2_rounding == "error":
        scale = choose_pow2_scales_exact(w, scale, axis)  # an all-zero channel: both candidates exact, 1 kept
    elif pow2:
        scale = np.array([pow2_ceil(float(v)) for v in np.ravel(scale)]).reshape(np.shape(scale))
    return scale.astype(np.float32)


def weight_scales_for(model, target: str, per_channel: bool = True, pow2_rounding: str = "up",
                      skip_nodes: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[np.ndarray, int | None]]:
    """Returns {weight initializer: (scales, axis)}: the symmetric int8 scales emission uses for ``model``'s
    Conv/ConvTranspose/Gemm/MatMul weights on ``target`` (``axis`` None = one scale per tensor).

    Per channel on axis 0 (Conv) / 1 (ConvTranspose) with ``per_channel``, except a grouped ConvTranspose (its
    axis 1 holds one group's output channels only): one scale per tensor. Power-of-two on ``npu-pow2``.
    """
    from onnx import numpy_helper

    from fcnquant.calibrate.qparams import get_target

    pow2 = get_target(target).pow2
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[np.ndarray, int | None]] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.name in skip_nodes or len(node.input) < 2:
            continue
        w_name = node.input[1]
        if w_name not in inits or w_name in out:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        grouped_deconv = node.op_type == "ConvTranspose" and group != 1
        axis = CHANNEL_AXIS.get(node.op_type) if per_channel and not grouped_deconv else None
        w = numpy_helper.to_array(inits[w_name])
        out[w_name] = (symmetric_scales(w, axis, pow2=pow2, pow2_rounding=pow2_rounding), axis)
    return out
