"""Streaming drift metrics between a reference tensor and its quantized counterpart, and a layer's record of them.

For a reference ``r`` (the float model's tensor) and a test ``q`` (the quantized model's tensor), accumulated over
every value of every image seen, with ``e = q - r``::

    cosine      = sum(r * q) / sqrt(sum(r^2) * sum(q^2))
    snr_db      = 10 * log10(sum(r^2) / sum(e^2))          (+inf when e == 0 everywhere)
    mse         = sum(e^2) / n
    max_abs     = max |e|
    rel_l2      = sqrt(sum(e^2) / sum(r^2))

The accumulator holds five sums and a max, so memory does not grow with the number of images. Each update's float64
partial sums are added *exactly* (:class:`ExactSum`, Shewchuk's non-overlapping partials, a handful of floats): the
result is the correctly rounded total of the updates' sums whatever order they arrive in, so accumulators filled in
any order or merged from shards (``merge``) give the same bits, given the same per-update inputs (one image per
update, as :mod:`fcnquant.compare.drift.measure` does). The error is formed per element in float64, exactly for
float32/float16 inputs (never as ``sum(q^2) - 2 sum(rq) + sum(r^2)``, which cancels catastrophically when the
error is small), in chunks that stay in cache. Pairs where either value
is NaN or infinite are left out of the sums and counted in ``nonfinite``. float32 pairs go through the compiled
one-pass kernel of :mod:`fcnquant.compare.drift.kernel` where it is built (~5x faster; the same sums to
rounding), the numpy code here otherwise and for other dtypes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# the compiled one-pass sums for float32 pairs and for float32 against integer codes (None where not built)
from fcnquant.compare.drift.kernel import drift_sums as _KERNEL, drift_sums_codes as _CODES_KERNEL

_CHUNK = 1 << 16  # values per inner step: two float64 chunks plus the error fit in L2

_CODE_TYPES = tuple(np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "int32"))  # what the kernel reads


@dataclass(frozen=True)
class QuantizedValues:
    """A quantized tensor as its integer ``codes`` with a per-tensor ``scale`` (float32) and ``zero_point``: the
    values ``float32(int(code) - zero_point) * scale``, what a DequantizeLinear of the codes outputs."""

    codes: np.ndarray
    scale: np.float32
    zero_point: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def __getitem__(self, index) -> "QuantizedValues":
        return QuantizedValues(self.codes[index], self.scale, self.zero_point)

    def dequantize(self) -> np.ndarray:
        """Returns the float32 values."""
        return (self.codes.astype(np.int32) - np.int32(self.zero_point)).astype(np.float32) * np.float32(self.scale)


@dataclass(frozen=True)
class DriftMetrics:
    """Drift of one tensor over all values seen (see the module docstring for the formulas)."""

    count: int
    cosine: float
    snr_db: float
    mse: float
    max_abs: float
    rel_l2: float
    nonfinite: int = 0

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict; non-finite floats (an SNR of +inf for identical tensors) become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DriftMetrics":
        """Returns the metrics stored by ``to_dict`` (None read back as +inf SNR / NaN elsewhere)."""
        def num(key: str, none: float) -> float:
            v = d.get(key)
            return none if v is None else float(v)

        return cls(count=int(d["count"]), cosine=num("cosine", math.nan), snr_db=num("snr_db", math.inf),
                   mse=num("mse", math.nan), max_abs=num("max_abs", math.nan), rel_l2=num("rel_l2", math.nan),
                   nonfinite=int(d.get("nonfinite", 0)))


@dataclass(frozen=True)
class LayerDrift:
    """Drift of one quantized activation, accumulated (whole quantized model) and isolated (its own quantization)."""

    float_name: str
    quant_name: str
    op_type: str
    order: int  # depth: position among the quantized activations, in the float model's topological order
    source: str  # how it was paired: "tensor_map" or "structure"
    accumulated: DriftMetrics
    isolated: DriftMetrics | None = None
    clip: tuple[float, float] | None = None  # calibration range (lo, hi) when a table was given

    @property
    def inherited_db(self) -> float:
        """Returns isolated SNR minus accumulated SNR: how much of this layer's drift comes from upstream."""
        if self.isolated is None:
            return math.nan
        a, i = self.accumulated.snr_db, self.isolated.snr_db
        return i - a if math.isfinite(a) and math.isfinite(i) else math.nan

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {
            "float_name": self.float_name, "quant_name": self.quant_name, "op_type": self.op_type,
            "order": self.order, "source": self.source, "accumulated": self.accumulated.to_dict(),
            "isolated": self.isolated.to_dict() if self.isolated is not None else None,
            "clip": list(self.clip) if self.clip is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerDrift":
        """Returns the LayerDrift stored by ``to_dict``."""
        return cls(
            float_name=d["float_name"], quant_name=d["quant_name"], op_type=d["op_type"], order=int(d["order"]),
            source=d["source"], accumulated=DriftMetrics.from_dict(d["accumulated"]),
            isolated=DriftMetrics.from_dict(d["isolated"]) if d.get("isolated") else None,
            clip=tuple(d["clip"]) if d.get("clip") else None,
        )


class ExactSum:
    """The exact sum of any number of floats, as non-overlapping partials (Shewchuk; what ``math.fsum`` keeps).

    ``value`` is the correctly rounded total, so it does not depend on the order of ``add`` calls or of ``merge``s.
    The partials stay a few floats long (at most ~40 for any float64 data, 1-3 in practice).
    """

    __slots__ = ("partials",)

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        """Adds ``x`` exactly."""
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    def merge(self, other: "ExactSum") -> None:
        """Adds every partial of ``other`` exactly."""
        for y in list(other.partials):
            self.add(y)

    @property
    def value(self) -> float:
        """Returns the correctly rounded sum."""
        return math.fsum(self.partials)

    def __getstate__(self):
        return list(self.partials)

    def __setstate__(self, state) -> None:
        self.partials = list(state)


class DriftAccumulator:
    """Accumulates the sums behind ``DriftMetrics`` over any number of (reference, test) tensor pairs.

    The sums are exact (:class:`ExactSum`): updates in any order, and merges of accumulators in any grouping, give
    the same metrics bit for bit.
    """

    __slots__ = ("count", "_ref2", "_test2", "_dot", "_err2", "max_abs", "nonfinite")

    def __init__(self) -> None:
        self.count = 0
        self._ref2, self._test2, self._dot, self._err2 = ExactSum(), ExactSum(), ExactSum(), ExactSum()
        self.max_abs = 0.0
        self.nonfinite = 0

    @property
    def sum_ref2(self) -> float:
        """sum(r^2), correctly rounded."""
        return self._ref2.value

    @property
    def sum_test2(self) -> float:
        """sum(q^2), correctly rounded."""
        return self._test2.value

    @property
    def sum_dot(self) -> float:
        """sum(r q), correctly rounded."""
        return self._dot.value

    @property
    def sum_err2(self) -> float:
        """sum((q - r)^2), correctly rounded."""
        return self._err2.value

    def _add(self, err2: float, ref2: float, test2: float, dot: float) -> None:
        self._err2.add(err2)
        self._ref2.add(ref2)
        self._test2.add(test2)
        self._dot.add(dot)

    def __getstate__(self):
        return (self.count, self._ref2, self._test2, self._dot, self._err2, self.max_abs, self.nonfinite)

    def __setstate__(self, state) -> None:
        (self.count, self._ref2, self._test2, self._dot, self._err2, self.max_abs, self.nonfinite) = state

    def update(self, ref: np.ndarray, test: "np.ndarray | QuantizedValues") -> None:
        """Adds every element pair of ``ref`` and ``test`` (same shape, any float dtype, or QuantizedValues) to the
        sums."""
        ref = np.asarray(ref)
        if isinstance(test, QuantizedValues):
            if ref.shape != test.shape:
                raise ValueError(f"reference shape {ref.shape} differs from test shape {test.shape}")
            r_all, codes = ref.reshape(-1), test.codes.reshape(-1)
            if (_CODES_KERNEL is not None and r_all.dtype == np.float32 and codes.dtype in _CODE_TYPES
                    and r_all.size):
                se, sr, st, sd, mx = _CODES_KERNEL(np.ascontiguousarray(r_all), np.ascontiguousarray(codes),
                                                   int(test.zero_point), float(np.float32(test.scale)))
                if math.isfinite(se):
                    self.count += r_all.size
                    self._add(se, sr, st, sd)
                    self.max_abs = max(self.max_abs, mx)
                    return
            test = test.dequantize()
        test = np.asarray(test)
        if ref.shape != test.shape:
            raise ValueError(f"reference shape {ref.shape} differs from test shape {test.shape}")
        r_all = ref.reshape(-1)
        t_all = test.reshape(-1)
        if _KERNEL is not None and r_all.dtype == np.float32 and t_all.dtype == np.float32 and r_all.size:
            se, sr, st, sd, mx = _KERNEL(np.ascontiguousarray(r_all), np.ascontiguousarray(t_all))
            if math.isfinite(se):  # else a NaN/Inf is in there: the numpy path below drops and counts it
                self.count += r_all.size
                self._add(se, sr, st, sd)
                self.max_abs = max(self.max_abs, mx)
                return
        for start in range(0, r_all.size, _CHUNK):
            r = r_all[start:start + _CHUNK]
            t = t_all[start:start + _CHUNK]
            e = np.subtract(t, r, dtype=np.float64)  # exact: float32/float16 values differ exactly in float64
            err2 = _dot(e, e)
            if not math.isfinite(err2):  # rare: drop the non-finite pairs of this chunk and redo it
                keep = np.isfinite(r) & np.isfinite(t)
                self.nonfinite += int(keep.size - np.count_nonzero(keep))
                r, t = r[keep], t[keep]
                e = np.subtract(t, r, dtype=np.float64)
                err2 = _dot(e, e)
            self.count += r.size
            self._add(err2, _dot(r, r), _dot(t, t), _dot(r, t))
            if e.size:
                self.max_abs = max(self.max_abs, float(e.max()), float(-e.min()))

    def merge(self, other: "DriftAccumulator") -> "DriftAccumulator":
        """Adds ``other``'s sums into this accumulator (exactly) and returns self."""
        self.count += other.count
        self._ref2.merge(other._ref2)
        self._test2.merge(other._test2)
        self._dot.merge(other._dot)
        self._err2.merge(other._err2)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.nonfinite += other.nonfinite
        return self

    def result(self) -> DriftMetrics:
        """Returns the metrics of everything accumulated so far (NaN where undefined, e.g. nothing seen)."""
        ref2, err2 = self.sum_ref2, self.sum_err2
        return DriftMetrics(
            count=self.count,
            cosine=cosine(self.sum_dot, ref2, self.sum_test2),
            snr_db=snr_db(ref2, err2),
            mse=err2 / self.count if self.count else math.nan,
            max_abs=self.max_abs if self.count else math.nan,
            rel_l2=math.sqrt(err2 / ref2) if ref2 > 0 else (0.0 if self.count and err2 == 0 else math.nan),
            nonfinite=self.nonfinite,
        )


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Returns sum(a * b) with products and sum in float64 (einsum converts float32/float16 inputs on the fly).

    einsum's own loop, not BLAS: ddot spawns threads, which on a busy machine costs more than the sum itself.
    """
    return float(np.einsum("i,i->", a, b, dtype=np.float64))


def snr_db(signal_energy: float, noise_energy: float) -> float:
    """Returns 10 log10(signal / noise) in dB: +inf for zero noise, -inf for zero signal with noise, NaN for 0/0."""
    if noise_energy == 0:
        return math.inf if signal_energy > 0 else math.nan
    if signal_energy == 0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def cosine(dot: float, norm2_a: float, norm2_b: float) -> float:
    """Returns dot / sqrt(norm2_a * norm2_b) clipped to [-1, 1]; 1.0 when both vectors are zero, 0.0 when one is."""
    if norm2_a == 0 and norm2_b == 0:
        return 1.0
    if norm2_a == 0 or norm2_b == 0:
        return 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(norm2_a * norm2_b)))  # float32 data cannot overflow the product
