"""One pass over a tensor for both observers: the compiled kernel when numba is there, else the numpy observers.

:func:`update_stats` gives exactly the state that ``hist.update(x); minmax.update(x)`` gives (the numpy
observers are the reference; the tests compare bin for bin), reading the tensor once instead of three times.
NaN/Inf: the kernel's counts land in the histogram's non-finite bins; the histogram then raises
:class:`~fcnquant.observers.NonFiniteError` with its counts rolled back and the min/max untouched, or (skipping
non-finite values) drops them and the min/max of that batch is recomputed by the numpy observer (a rare path).
"""
from __future__ import annotations

import numpy as np

from fcnquant.observers import kernel
from fcnquant.observers.base import as_float32
from fcnquant.observers.histogram import HistogramObserver
from fcnquant.observers.minmax import MinMaxObserver


def compiled() -> bool:
    """Returns True when the compiled kernel is in use (numba importable and not disabled)."""
    return kernel.KERNEL is not None


def update_stats(hist: HistogramObserver, minmax: MinMaxObserver, x: np.ndarray) -> None:
    """Adds the values of ``x`` to both observers, as ``hist.update(x)`` then ``minmax.update(x)`` would."""
    a = as_float32(x)
    if a.size == 0:
        return
    if kernel.KERNEL is None:
        hist.update(a)
        minmax.update(a)
        return
    u = a.view(np.uint32)
    before = hist.nonfinite
    lo, hi = kernel.observe(u, a, hist.counts, hist.shift)
    hist._settle_nonfinite(u)  # raises NonFiniteError (counts rolled back) unless skipping non-finite values
    if hist.nonfinite != before:
        minmax.update(a)  # the batch held NaN/Inf that were skipped: numpy finds the finite extremes
    else:
        minmax.fold(lo, hi, a.size)
