"""Streaming drift metrics between a reference tensor and its quantized counterpart.

For a reference ``r`` (the float model's tensor) and a test ``q`` (the quantized model's tensor), accumulated over
every value of every image seen, with ``e = q - r``::

    cosine      = sum(r * q) / sqrt(sum(r^2) * sum(q^2))
    snr_db      = 10 * log10(sum(r^2) / sum(e^2))          (+inf when e == 0 everywhere)
    mse         = sum(e^2) / n
    max_abs     = max |e|
    rel_l2      = sqrt(sum(e^2) / sum(r^2))

The accumulator holds five float64 sums and a max, so memory does not grow with the number of images. The error is
formed per element in float64, exactly for float32/float16 inputs (never as ``sum(q^2) - 2 sum(rq) + sum(r^2)``,
which cancels catastrophically when the error is small), in chunks that stay in cache. Pairs where either value
is NaN or infinite are left out of the sums and counted in ``nonfinite``. float32 pairs go through the compiled
one-pass kernel of :mod:`fcnquant.compare.drift_kernel` when numba is available (~5x faster; the same sums to
rounding), the numpy code here otherwise and for other dtypes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_CHUNK = 1 << 16  # values per inner step: two float64 chunks plus the error fit in L2


def _kernel():
    from fcnquant.compare.drift_kernel import KERNEL

    return KERNEL


_KERNEL = _kernel()  # the compiled one-pass sums for float32 pairs (fcnquant.compare.drift_kernel), or None


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


class DriftAccumulator:
    """Accumulates the sums behind ``DriftMetrics`` over any number of (reference, test) tensor pairs."""

    __slots__ = ("count", "sum_ref2", "sum_test2", "sum_dot", "sum_err2", "max_abs", "nonfinite")

    def __init__(self) -> None:
        self.count = 0
        self.sum_ref2 = 0.0
        self.sum_test2 = 0.0
        self.sum_dot = 0.0
        self.sum_err2 = 0.0
        self.max_abs = 0.0
        self.nonfinite = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        """Adds every element pair of ``ref`` and ``test`` (same shape, any float dtype) to the sums."""
        ref = np.asarray(ref)
        test = np.asarray(test)
        if ref.shape != test.shape:
            raise ValueError(f"reference shape {ref.shape} differs from test shape {test.shape}")
        r_all = ref.reshape(-1)
        t_all = test.reshape(-1)
        if _KERNEL is not None and r_all.dtype == np.float32 and t_all.dtype == np.float32 and r_all.size:
            se, sr, st, sd, mx = _KERNEL(np.ascontiguousarray(r_all), np.ascontiguousarray(t_all))
            if math.isfinite(se):  # else a NaN/Inf is in there: the numpy path below drops and counts it
                self.count += r_all.size
                self.sum_err2 += se
                self.sum_ref2 += sr
                self.sum_test2 += st
                self.sum_dot += sd
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
            self.sum_err2 += err2
            self.sum_ref2 += _dot(r, r)
            self.sum_test2 += _dot(t, t)
            self.sum_dot += _dot(r, t)
            if e.size:
                self.max_abs = max(self.max_abs, float(e.max()), float(-e.min()))

    def merge(self, other: "DriftAccumulator") -> "DriftAccumulator":
        """Adds ``other``'s sums into this accumulator and returns self."""
        self.count += other.count
        self.sum_ref2 += other.sum_ref2
        self.sum_test2 += other.sum_test2
        self.sum_dot += other.sum_dot
        self.sum_err2 += other.sum_err2
        self.max_abs = max(self.max_abs, other.max_abs)
        self.nonfinite += other.nonfinite
        return self

    def result(self) -> DriftMetrics:
        """Returns the metrics of everything accumulated so far (NaN where undefined, e.g. nothing seen)."""
        return DriftMetrics(
            count=self.count,
            cosine=cosine(self.sum_dot, self.sum_ref2, self.sum_test2),
            snr_db=snr_db(self.sum_ref2, self.sum_err2),
            mse=self.sum_err2 / self.count if self.count else math.nan,
            max_abs=self.max_abs if self.count else math.nan,
            rel_l2=math.sqrt(self.sum_err2 / self.sum_ref2) if self.sum_ref2 > 0 else
            (0.0 if self.count and self.sum_err2 == 0 else math.nan),
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
