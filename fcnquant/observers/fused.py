"""One pass over a tensor for both observers: the compiled kernel where it is built, else the numpy observers.

:func:`update_stats` gives exactly the state that ``hist.update(x); minmax.update(x)`` gives (the numpy
observers are the reference; the tests compare bin for bin), reading the tensor once instead of three times.
Which path runs never changes a statistic, only the time (:mod:`fcnquant.observers.kernel`: ~0.77 ns per value
against ~2.6 ns).

:class:`LaneHistogram` is a :class:`~fcnquant.observers.HistogramObserver` whose kernel updates go into two int32
lanes (see :mod:`fcnquant.observers.kernel`) that are folded into the exact int64 ``counts`` whenever anything
reads ``counts`` (state, merge, re-binning...) and before any lane could reach 2**31; the observed histogram is
always ``counts`` after the fold, so it is the same object to every reader. :func:`new_histogram` returns one when
the kernel is available.

``nonzero_bins()`` (what ``state()``, a statistics file, a Ray shard's result and every scale method read),
``count_at`` and ``total`` are read from the lanes directly while the dense ``counts`` were never touched: the same
values as after a fold, without writing the 4 MiB ``counts`` of every tensor. On this machine the first write to
fresh pages cost ~75 us a page inside the collector's multi-threaded process: folding 78 tensors of the demo
fcn_r50_d8 took 2.2 s, more than collecting them (a Ray shard of 32 images: 0.9 s of inference, then 2.2 s of
folds before its result could be sent).

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


def compiled() -> bool:
    """Returns True when the compiled kernel is usable."""
    return kernel.available()


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
        lo, hi = float("inf"), float("-inf")
        for start in range(0, a.size, FOLD_AT):
            part = a[start:start + FOLD_AT]
            if self._pending + part.size > FOLD_AT:
                self._fold()
            if self._lanes is None:
                self._lanes = np.zeros(2 * self.num_bins, dtype=np.int32)
            plo, phi = kernel.observe_lanes(part, self._lanes, self.shift)
            self._pending += part.size
            lo, hi = min(lo, plo), max(hi, phi)
        if self._lane_nonfinite():
            self._settle_nonfinite(a.view(np.uint32))  # folds, then raises (rolled back) or drops the NaN/Inf counts
        return lo, hi


def new_histogram(mantissa_bits: int = DEFAULT_MANTISSA_BITS, *, skip_nonfinite: bool = False,
                  compiled: bool | None = None) -> HistogramObserver:
    """Returns an empty histogram observer: a LaneHistogram fed by the compiled kernel, or the numpy one.

    ``compiled``: True or None (default) use the kernel where it is available, False keeps to numpy.
    """
    use = compiled is not False and kernel.available()
    cls = LaneHistogram if use else HistogramObserver
    return cls(mantissa_bits, skip_nonfinite=skip_nonfinite)


def update_stats(hist: HistogramObserver, minmax: MinMaxObserver, x: np.ndarray) -> None:
    """Adds the values of ``x`` to both observers, as ``hist.update(x)`` then ``minmax.update(x)`` would.

    The histogram's class chooses the path: a LaneHistogram is fed by the compiled kernel in one pass (by numpy if
    the kernel is not available), a plain HistogramObserver by numpy. The state is the same either way.
    """
    a = as_float32(x)
    if a.size == 0:
        return
    if not isinstance(hist, LaneHistogram) or not kernel.available():
        hist.update(a)
        minmax.update(a)
        return
    before = hist.nonfinite
    lo, hi = hist.observe(a)  # raises NonFiniteError (counts rolled back) unless skipping non-finite values
    if hist.nonfinite != before:
        minmax.update(a)  # the batch held NaN/Inf that were skipped: numpy finds the finite extremes
    else:
        minmax.fold(lo, hi, a.size)
