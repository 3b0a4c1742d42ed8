"""One pass over a tensor for both observers: the compiled kernel when it pays, else the numpy observers.

:func:`update_stats` gives exactly the state that ``hist.update(x); minmax.update(x)`` gives (the numpy
observers are the reference; the tests compare bin for bin), reading the tensor once instead of three times.
Which path runs never changes a statistic, only the time: the kernel costs ~0.55 s of CPU to load per process
(:mod:`fcnquant.observers.kernel`) and then saves ~1.8 ns per value, so :func:`worth_compiling` chooses it for
runs of more than :data:`COMPILE_FROM_VALUES` values (~13 fcn8s images at 320x320), or whenever it is loaded
already.

:class:`LaneHistogram` is a :class:`~fcnquant.observers.HistogramObserver` whose kernel updates go into two int32
lanes (see :mod:`fcnquant.observers.kernel`) that are folded into the exact int64 ``counts`` whenever anything
reads ``counts`` (state, merge, re-binning...) and before any lane could reach 2**31; the observed histogram is
always ``counts`` after the fold, so it is the same object to every reader. :func:`new_histogram` returns one when
the kernel is available.

``nonzero_bins()`` (what ``state()``, a statistics file, a Ray shard's result and every scale method read),
``count_at`` and ``total`` are read from the lanes directly while the dense ``counts`` were never touched: the same
values as after a fold, without writing the 4 MiB ``counts`` of every tensor. On this machine the first write to fresh pages cost ~75 us a page inside the collector's multi-threaded
process: folding 78 tensors of the demo fcn_r50_d8 took 2.2 s, more than collecting them (a Ray shard of 32 images:
0.9 s of inference, then 2.2 s of folds before its result could be sent).

NaN/Inf: the kernel's counts land in the histogram's non-finite bins, which are checked after each update; the
histogram then raises :class:`~fcnquant.observers.NonFiniteError` with its counts rolled back and the min/max
untouched, or (skipping non-finite values) drops them, and the min/max of that batch is recomputed by the numpy
observer (a rare path).
"""
from __future__ import annotations

import numpy as np

from fcnquant.observers import kernel
from fcnquant.observers.base import as_float32
from fcnquant.observers.histogram import DEFAULT_MANTISSA_BITS, HistogramObserver
from fcnquant.observers.minmax import MinMaxObserver

FOLD_AT = (1 << 31) - 1  # values a lane set may take before it is folded (each int32 lane stays below 2**31)

#: Values a run must observe before loading the compiled kernel pays. Measured on a 2-core AMD EPYC, numba 0.68,
#: CPU seconds: per value the numpy observers take 2.5 ns, the kernel 0.7 ns (bench/bench_observers.py); loading
#: the kernel 0.55 s (import numba 0.19 s + first calls 0.35 s), i.e. ~300 M values. Whole `calibrate --method kl`
#: processes on full fcn8s at 320x320 (~30 M values per image), numpy vs kernel, under load 6-8: 1 image 1.85 vs
#: 2.61 s, 4 images 4.59 vs 5.08, 8 images 7.73 vs 7.97, 16 images 14.22 vs 14.08: the two cross at ~13 images.
COMPILE_FROM_VALUES = 400_000_000


def compiled() -> bool:
    """Returns True when the compiled kernel is usable (loading it, and numba, on first call)."""
    return kernel.load()


def worth_compiling(values: int) -> bool:
    """Whether observing ``values`` values should use the compiled kernel: when it is loaded already, or when the
    run is large enough to win back its loading (:data:`COMPILE_FROM_VALUES`) and numba is available."""
    return kernel.loaded() or (values >= COMPILE_FROM_VALUES and kernel.available())


class LaneHistogram(HistogramObserver):
    """A HistogramObserver fed by the two-lane kernel; ``counts`` folds the lanes in first, so reads are exact."""

    def __init__(self, mantissa_bits: int = DEFAULT_MANTISSA_BITS, *, skip_nonfinite: bool = False) -> None:
        self._lanes: np.ndarray | None = None
        self._pending = 0  # values in the lanes since the last fold
        self._counts_used = False  # anything read or wrote the dense counts (then they may be non-zero)
        self._sparse: tuple | None = None  # (pending, index, count) of the lanes, while counts are unused
        super().__init__(mantissa_bits, skip_nonfinite=skip_nonfinite)

    @property
    def counts(self) -> np.ndarray:
        """The exact int64 counts (lanes folded in)."""
        self._fold()
        self._counts_used = True
        return self._counts

    @property
    def total(self) -> int:
        """Number of (finite) values counted."""
        return int(self.nonzero_bins()[1].sum()) if not self._counts_used else super().total

    def nonzero_bins(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the non-empty bins and counts; read from the lanes alone while ``counts`` is untouched."""
        if self._counts_used:
            return super().nonzero_bins()
        if self._sparse is None or self._sparse[0] != self._pending:
            if self._lanes is None or not self._pending:
                index, count = np.zeros(0, np.int64), np.zeros(0, np.int64)
            else:
                flat = np.flatnonzero(self._lanes != 0)  # lane entries 2k and 2k+1 belong to bin k (!= 0: faster)
                bins = flat >> 1  # ascending, so a bin's first entry is where it differs from the one before
                start = np.flatnonzero(np.diff(bins, prepend=-1))  # = np.unique(bins, return_index=True)[1]
                index = bins[start]
                count = np.add.reduceat(self._lanes[flat].astype(np.int64), start)
            self._sparse = (self._pending, index.astype(np.int64), count)
        return self._sparse[1], self._sparse[2]

    def count_at(self, bins: np.ndarray) -> np.ndarray:
        """Returns the counts of ``bins`` (from the lanes while ``counts`` is untouched)."""
        if self._counts_used:
            return super().count_at(bins)
        b = np.asarray(bins, dtype=np.intp)
        if self._lanes is None:
            return np.zeros(b.shape, np.int64)
        return self._lanes[2 * b].astype(np.int64) + self._lanes[2 * b + 1]

    @counts.setter
    def counts(self, value: np.ndarray) -> None:
        if self._pending:
            raise RuntimeError("histogram counts replaced while lane counts are pending")
        self._counts = value

    def _fold(self) -> None:
        if self._pending:
            self._counts_used = True  # the counts hold data now: every reader goes through them
            kernel.fold_lanes(self._lanes, self._counts)
            self._lanes = None  # a fresh zeroed array on the next update (untouched pages cost nothing)
            self._pending = 0

    def _lane_nonfinite(self) -> int:
        pos, neg = self._nonfinite_slices()
        lanes = self._lanes
        return int(lanes[2 * pos.start:2 * pos.stop].sum() + lanes[2 * neg.start:2 * neg.stop].sum())

    def observe(self, a: np.ndarray) -> tuple[float, float]:
        """Returns (min, max) of the flat float32 ``a`` after counting it (may raise NonFiniteError, rolled back)."""
        u = a.view(np.uint32)
        lo, hi = float("inf"), float("-inf")
        for start in range(0, u.size, FOLD_AT):
            part_u, part_f = u[start:start + FOLD_AT], a[start:start + FOLD_AT]
            if self._pending + part_u.size > FOLD_AT:
                self._fold()
            if self._lanes is None:
                self._lanes = np.zeros(2 * self.num_bins, dtype=np.int32)
            plo, phi = kernel.observe_lanes(part_u, part_f, self._lanes, self.shift)
            self._pending += part_u.size
            lo, hi = min(lo, plo), max(hi, phi)
        if self._lane_nonfinite():
            self._settle_nonfinite(u)  # folds, then raises (rolled back) or drops the NaN/Inf counts
        return lo, hi


def new_histogram(mantissa_bits: int = DEFAULT_MANTISSA_BITS, *, skip_nonfinite: bool = False,
                  compiled: bool | None = None) -> HistogramObserver:
    """Returns an empty histogram observer: a LaneHistogram fed by the compiled kernel, or the numpy one.

    ``compiled``: True loads the kernel (numpy when it is unavailable), False keeps to numpy, None (default) uses
    the kernel only if it is loaded already, so creating statistics never imports numba.
    """
    use = kernel.load() if compiled else compiled is None and kernel.loaded()
    cls = LaneHistogram if use else HistogramObserver
    return cls(mantissa_bits, skip_nonfinite=skip_nonfinite)


def update_stats(hist: HistogramObserver, minmax: MinMaxObserver, x: np.ndarray) -> None:
    """Adds the values of ``x`` to both observers, as ``hist.update(x)`` then ``minmax.update(x)`` would.

    The histogram's class chooses the path: a LaneHistogram is fed by the compiled kernel in one pass (by numpy if
    the kernel cannot load), a plain HistogramObserver by numpy. The state is the same either way.
    """
    a = as_float32(x)
    if a.size == 0:
        return
    if not isinstance(hist, LaneHistogram) or not kernel.load():
        hist.update(a)
        minmax.update(a)
        return
    before = hist.nonfinite
    lo, hi = hist.observe(a)  # raises NonFiniteError (counts rolled back) unless skipping non-finite values
    if hist.nonfinite != before:
        minmax.update(a)  # the batch held NaN/Inf that were skipped: numpy finds the finite extremes
    else:
        minmax.fold(lo, hi, a.size)
