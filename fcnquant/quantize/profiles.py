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

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """How a target's int8 graph is built: activation type and symmetry, power-of-two scales, TensorRT cache."""

    name: str
    activation_dtype: str  # "uint8" or "int8"
    symmetric: bool
    pow2: bool
    tensorrt_cache: bool
    target: object = field(default=None, compare=False)  # the fcnquant.targets.Target it was made from

    @property
    def activation_qrange(self) -> tuple[int, int]:
        """Returns the (qmin, qmax) of the activation integer type."""
        return (0, 255) if self.activation_dtype == "uint8" else (-128, 127)


def get_profile(target) -> Profile:
    """Returns the Profile of ``target`` (a built-in name, a target file or a ``fcnquant.targets.Target``);
    unknown names and bad files raise."""
    from fcnquant.targets import get_target

    t = get_target(target)
    return Profile(t.name, t.activation_dtype, t.symmetric, t.pow2, t.tensorrt_cache, t)


def _target(profile: Profile):
    from fcnquant.targets import get_target

    return get_target(profile.target if profile.target is not None else profile.name)


def activation_qparams(table, name: str, profile: Profile) -> tuple[float, int]:
    """Returns the (scale, zero_point) of activation ``name`` for ``profile``.

    The table's own scale and zero point are used when it was computed for this target; otherwise they are
    recomputed from the table's range ``[lo, hi]`` with ``fcnquant.calibrate.qparams``.
    """
    entry = table.tensors[name]
    if _same_arithmetic(table, profile) and entry.scale is not None and entry.zero_point is not None:
        return float(entry.scale), int(entry.zero_point)
    return _qparams(float(entry.lo), float(entry.hi), profile)


def _same_arithmetic(table, profile: Profile) -> bool:
    """Whether ``table`` was computed for a target with ``profile``'s activation arithmetic (then its scales and
    zero points apply as they are)."""
    resolved = getattr(table, "resolved_target", None)
    if resolved is None:
        return getattr(table, "target", None) == profile.name
    return resolved.arithmetic() == _target(profile).arithmetic()


def _qparams(lo: float, hi: float, profile: Profile) -> tuple[float, int]:
    from fcnquant.calibrate.qparams import qparams

    scale, zero_point = qparams(lo, hi, _target(profile))
    return float(scale), int(zero_point)
