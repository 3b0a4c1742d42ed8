"""The target's arithmetic rules the emulator follows, read from a :class:`~fcnquant.targets.Target`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fcnquant.emulate.arith import RESIZE_FRAC_BITS, ROUNDINGS
from fcnquant.errors import CalibrationError

#: the target the emulator assumes for a model whose metadata names none
DEFAULT_TARGET = "npu-pow2"


@dataclass(frozen=True)
class Arithmetic:
    """What the emulated chip computes, where targets differ.

    ``rounding``: requantization rounding (``fcnquant.emulate.arith.ROUNDINGS``); ``accumulator_bits``: the
    accumulator wraps (two's complement) beyond it; ``add_concat``/``max_shift``: how Add and Concat inputs of
    different scales are aligned (recorded; the emulator aligns any ratio exactly, see docs/emulation.md);
    ``resize_bits``: fraction bits of the bilinear coefficients.
    """

    target: str = DEFAULT_TARGET
    rounding: str = "half_up"
    accumulator_bits: int = 32
    add_concat: str = "shift"
    max_shift: int = 8
    resize_bits: int = RESIZE_FRAC_BITS

    def __post_init__(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise CalibrationError(f"unknown rounding {self.rounding!r}; choose from {', '.join(ROUNDINGS)}")
        if not 16 <= self.accumulator_bits <= 48:
            raise CalibrationError(f"accumulator_bits must be in 16..48, got {self.accumulator_bits}")

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"target": self.target, "rounding": self.rounding, "accumulator_bits": self.accumulator_bits,
                "add_concat": self.add_concat, "max_shift": self.max_shift, "resize_bits": self.resize_bits}


def arithmetic_of(target) -> Arithmetic:
    """Returns the Arithmetic of ``target`` (a :class:`~fcnquant.targets.Target`, a built-in name or the path of a
    target file): its ``rounding``, ``accumulator_bits``, ``add_concat`` and ``max_shift``."""
    from fcnquant.targets import get_target

    t = get_target(target)
    return Arithmetic(target=t.name, rounding=t.rounding, accumulator_bits=int(t.accumulator_bits),
                      add_concat=t.add_concat, max_shift=int(t.max_shift))


def model_target(model) -> str:
    """Returns the target a quantized model was made for, from its metadata: the target file it records
    (``fcnquant.target_source``) when that file is still there, else the target's name (``fcnquant.target``),
    else the default."""
    meta = {p.key: p.value for p in model.metadata_props}
    source = meta.get("fcnquant.target_source", "")
    if source and not source.startswith("builtin:") and Path(source).is_file():
        return source
    return meta.get("fcnquant.target") or DEFAULT_TARGET
