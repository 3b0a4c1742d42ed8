"""The Target: what a deployment target's integer arithmetic can run, as read from its TOML file."""
from __future__ import annotations

from dataclasses import dataclass

#: integer types a target's activations or weights may use
DTYPES = ("int8", "uint8", "int16")
#: (qmin, qmax) of each integer type; symmetric signed types use the restricted range [-qmax, qmax]
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
#: weight granularities: one scale per output channel, one per tensor, or either
GRANULARITIES = ("per-channel", "per-tensor", "either")
#: requantization rounding of the integer pipeline (ties to even, toward +inf, away from zero; floor = plain shift)
ROUNDINGS = ("half_even", "half_up", "half_away", "floor")
#: how the inputs of an Add or Concat may differ in scale: any scales (a fixed-point multiplier per input), equal
#: scales only, or scales a power of two apart (at most ``max_shift`` bits)
ADD_CONCAT = ("any", "shared", "shift")
#: what a layer int8 cannot carry may fall back to
FALLBACKS = ("int16", "fp16", "float")


@dataclass(frozen=True)
class Target:
    """A deployment target's quantization scheme and integer arithmetic (file format: docs/targets.md).

    ``source`` is the file it was read from (``builtin:NAME`` for a shipped one) and ``sha256`` the hash of the
    file's bytes; both are recorded in the models and tables written for the target.
    """

    name: str
    activation_dtype: str  # "uint8", "int8" or "int16"
    symmetric: bool  # activations symmetric (zero point 0)
    pow2: bool = False  # scales restricted to powers of two (rounded up)
    weight_dtype: str = "int8"
    weight_symmetric: bool = True
    weight_granularity: str = "either"  # "per-channel", "per-tensor" or "either"
    rounding: str = "half_even"
    accumulator_bits: int = 32
    integer_ops: tuple[str, ...] = ("Conv", "ConvTranspose", "Add", "Concat", "MaxPool", "Resize")
    add_concat: str = "any"
    max_shift: int = 0
    fallbacks: tuple[str, ...] = ("int16", "fp16", "float")
    tensorrt_cache: bool = False  # the TensorRT calibration cache is written beside the int8 model
    description: str = ""
    source: str = ""
    sha256: str = ""

    def __str__(self) -> str:
        return self.name

    @property
    def builtin(self) -> bool:
        """True for a target shipped with fcnquant (read from its package file)."""
        return self.source.startswith("builtin:")

    @property
    def per_channel_weights(self) -> bool:
        """True when one weight scale per output channel is allowed."""
        return self.weight_granularity != "per-tensor"

    @property
    def per_tensor_weights(self) -> bool:
        """True when one weight scale per tensor is allowed."""
        return self.weight_granularity != "per-channel"

    @property
    def qmin(self) -> int:
        lo, hi = QRANGE[self.activation_dtype]
        return -hi if self.symmetric and lo < 0 else lo  # symmetric signed types use [-qmax, qmax]

    @property
    def qmax(self) -> int:
        return QRANGE[self.activation_dtype][1]

    def steps(self, nonnegative: bool) -> int:
        """Returns the number of quantization steps between 0 and the threshold of a tensor's range."""
        if not self.symmetric and nonnegative:
            return self.qmax - self.qmin
        return QRANGE[self.activation_dtype][1] if self.activation_dtype != "uint8" else 127

    def arithmetic(self) -> tuple:
        """Returns what decides the activation scales and zero points (equal tuples: the same table applies)."""
        return (self.activation_dtype, self.symmetric, self.pow2)
