"""Target profiles on the emission side: what each deployment target needs from the int8 QDQ graph.

The targets and the activation arithmetic (range -> scale, zero point) belong to ``fcnquant.calibrate.qparams``;
this module reads them and adds what emission needs to know:

- ``ort-cpu``: uint8 asymmetric activations, int8 symmetric weights. onnxruntime's CPU kernels fuse
  DQ -> Conv -> Q (with the Relu folded into the output's zero point) into QLinearConv.
- ``tensorrt``: int8 symmetric activations (zero point 0) and weights; the Relu stays in the graph (a symmetric
  int8 range cannot clip at 0) and the calibration cache is written beside the model.
- ``npu-pow2``: like ``tensorrt`` but every scale, weights included, is a power of two.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """How a target's int8 graph is built: activation type and symmetry, power-of-two scales, TensorRT cache."""

    name: str
    activation_dtype: str  # "uint8" or "int8"
    symmetric: bool
    pow2: bool
    tensorrt_cache: bool

    @property
    def activation_qrange(self) -> tuple[int, int]:
        """Returns the (qmin, qmax) of the activation integer type."""
        return (0, 255) if self.activation_dtype == "uint8" else (-128, 127)


#: targets whose int8 model is accompanied by a TensorRT calibration cache
TENSORRT_CACHE_TARGETS = frozenset({"tensorrt"})


def get_profile(target: str) -> Profile:
    """Returns the Profile of ``target`` (one of ``fcnquant.calibrate.qparams.TARGETS``); unknown names raise."""
    from fcnquant.calibrate.qparams import get_target

    t = get_target(target)
    return Profile(t.name, t.activation_dtype, t.symmetric, t.pow2, t.name in TENSORRT_CACHE_TARGETS)


def activation_qparams(table, name: str, profile: Profile) -> tuple[float, int]:
    """Returns the (scale, zero_point) of activation ``name`` for ``profile``.

    The table's own scale and zero point are used when it was computed for this target; otherwise they are
    recomputed from the table's range ``[lo, hi]`` with ``fcnquant.calibrate.qparams``.
    """
    entry = table.tensors[name]
    if getattr(table, "target", None) == profile.name and entry.scale is not None and entry.zero_point is not None:
        return float(entry.scale), int(entry.zero_point)
    return _qparams(float(entry.lo), float(entry.hi), profile)


def _qparams(lo: float, hi: float, profile: Profile) -> tuple[float, int]:
    from fcnquant.calibrate.qparams import qparams

    scale, zero_point = qparams(lo, hi, profile.name)
    return float(scale), int(zero_point)
