"""The target's arithmetic rules the emulator follows, read from a :class:`~fcnquant.calibrate.qparams.Target`."""
from __future__ import annotations

from dataclasses import dataclass

from fcnquant.emulate.arith import RESIZE_FRAC_BITS, ROUNDINGS
from fcnquant.errors import CalibrationError

#: the target the emulator assumes for a model whose metadata names none
DEFAULT_TARGET = "npu-pow2"
#: the built-in targets' requantization rounding (a target that does not declare one)
BUILTIN_ROUNDING = {"npu-pow2": "half_up", "ort-cpu": "half_even", "tensorrt": "half_even"}


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
    """Returns the Arithmetic of ``target`` (a Target or its name), with the built-in rules for fields it lacks.

    The one place that reads the target's arithmetic fields (``rounding``, ``accumulator_bits``, ``add_concat``,
    ``max_shift``); a target that does not carry them gets its built-in rounding (or half_even), 32 bits, shift
    alignment within 8 bits.
    """
    from fcnquant.calibrate.qparams import get_target

    t = get_target(target)
    return Arithmetic(
        target=t.name,
        rounding=getattr(t, "rounding", BUILTIN_ROUNDING.get(t.name, "half_even")),
        accumulator_bits=int(getattr(t, "accumulator_bits", 32)),
        add_concat=getattr(t, "add_concat", "shift"),
        max_shift=int(getattr(t, "max_shift", 8)),
    )


def model_target(model) -> str:
    """Returns the target recorded in a quantized model's metadata (``fcnquant.target``), else the default."""
    return next((p.value for p in model.metadata_props if p.key == "fcnquant.target"), "") or DEFAULT_TARGET
