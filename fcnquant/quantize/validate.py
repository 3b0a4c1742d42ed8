"""Checks a calibration table against the model it is about to quantize, before anything is written.

A table is refused (CalibrationError) when it was made for another model (its ``model_sha256`` is none of the
model's digests, ``fcnquant._io.model_digests``: graph and weights, however stored), lacks an activation the QDQ graph needs, or holds a non-finite range, a non-finite or
non-positive scale, a zero point outside the target's integer type (or non-zero for a symmetric target), or a
scale that is not a power of two for ``npu-pow2``.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable

from fcnquant.errors import CalibrationError
from fcnquant.quantize.profiles import Profile, activation_qparams

log = logging.getLogger(__name__)

_SHOW = 8  # names listed in an error message before "... and N more"


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_SHOW])
    return shown + (f" ... and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def check_model_hash(table, model_sha256: str | tuple[str, ...], model_label: str, table_label: str) -> None:
    """Raises CalibrationError when the table records a model sha256 other than ``model_sha256`` (one digest, or
    the model's digests from ``fcnquant._io.model_digests``: any of them matches)."""
    digests = (model_sha256,) if isinstance(model_sha256, str) else tuple(model_sha256)
    recorded = getattr(table, "model_sha256", None)
    if not recorded:
        log.warning("calibration table %s records no model sha256; cannot check it belongs to %s",
                    table_label, model_label)
        return
    if recorded not in digests:
        raise CalibrationError(
            f"calibration table {table_label} was made for another model (sha256 {recorded[:16]}...), "
            f"but {model_label} has sha256 {digests[0][:16]}...; calibrate this model first"
        )


def resolve_qparams(
    table, required: Iterable[str], optional: Iterable[str], profile: Profile, table_label: str
) -> dict[str, tuple[float, int]]:
    """Returns {tensor: (scale, zero_point)} for every required tensor and every optional one the table has.

    Raises CalibrationError listing every missing required tensor, or every tensor with an unusable entry.
    """
    required = list(dict.fromkeys(required))
    missing = [n for n in required if n not in table.tensors]
    if missing:
        raise CalibrationError(
            f"calibration table {table_label} lacks {len(missing)} activation(s) the model needs: {_names(missing)}; "
            "was it made for this model (and this graph's tensor names)?"
        )
    names = required + [n for n in dict.fromkeys(optional) if n in table.tensors and n not in set(required)]
    qmin, qmax = profile.activation_qrange
    out: dict[str, tuple[float, int]] = {}
    bad: list[str] = []
    for name in names:
        entry = table.tensors[name]
        lo, hi = float(entry.lo), float(entry.hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            bad.append(f"'{name}' (range [{lo}, {hi}])")
            continue
        scale, zero_point = activation_qparams(table, name, profile)
        if not math.isfinite(scale) or scale <= 0.0:
            bad.append(f"'{name}' (scale {scale})")
        elif not qmin <= zero_point <= qmax:
            bad.append(f"'{name}' (zero point {zero_point} outside [{qmin}, {qmax}] for {profile.name})")
        elif profile.symmetric and zero_point != 0:
            bad.append(f"'{name}' (zero point {zero_point}; {profile.name} needs 0)")
        elif profile.pow2 and math.frexp(scale)[0] != 0.5:
            bad.append(f"'{name}' (scale {scale} is not a power of two)")
        else:
            out[name] = (scale, zero_point)
    if bad:
        shown = "; ".join(bad[:_SHOW]) + (f" ... and {len(bad) - _SHOW} more" if len(bad) > _SHOW else "")
        raise CalibrationError(f"calibration table {table_label} has unusable entries: {shown}")
    return out
