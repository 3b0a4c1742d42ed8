"""The compiled observer kernels: bit-pattern histogram counts and min/max of a tensor in one pass.

They live in the C extension ``fcnquant._native`` (fcnquant/_native.c), built when the package is installed where
a C compiler is found. Both kernels add one count per value to the bins of
:class:`~fcnquant.observers.HistogramObserver` (the value's bits ``>> shift``, bin for bin) and return the
``(min, max)`` of the values in the same loop (each value is read from memory once). NaN compares false, so it
never becomes an extreme; NaN and +-Inf land in the histogram's non-finite bins, which the caller checks
(:mod:`fcnquant.observers.fused`).

* ``observe(values, counts, shift)`` counts into an int64 histogram, one lane (the plain form);
* ``observe_lanes(values, lanes, shift)`` counts into two int32 lanes interleaved per bin
  (``lanes[2 * bin + i % 2]``): consecutive values update different words, so a value never waits for the store
  of its neighbour in the same bin (ReLU zeros, neighbouring pixels), and the lanes take half the cache of int64
  counts. The collector uses this one; the caller folds the lanes into the exact int64 counts
  (:func:`fold_lanes`) before int32 could overflow.

CPU time per value on fcn8s-like tensors (``bench/bench_observers.py``, 30 M values, 2-core AMD EPYC): both
observers through the two-lane kernel 0.77 ns, the numpy observers 2.6 ns. Importing the extension takes about a
millisecond, so every run uses it. The kernels release the GIL: the collector's threads observe several tensors
at once. Without the extension (no compiler at install time), or with ``FCNQUANT_NO_NATIVE=1``, the numpy
observers run: the same statistics, bit for bit.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

DISABLE_ENV = "FCNQUANT_NO_NATIVE"


def disabled() -> bool:
    """Whether ``FCNQUANT_NO_NATIVE`` turns the compiled kernels off."""
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def _load_native():
    """Returns the ``fcnquant._native`` module, or None when it is not built or is disabled."""
    if disabled():
        log.debug("%s is set: the observers and drift sums use numpy", DISABLE_ENV)
        return None
    try:
        from fcnquant import _native
    except ImportError as exc:
        log.debug("the compiled kernels are not built (%s): the observers and drift sums use numpy", exc)
        return None
    return _native


#: the compiled kernels (the ``fcnquant._native`` module), or None: then numpy runs
NATIVE = _load_native()


def available() -> bool:
    """Whether the compiled kernels are usable in this process."""
    return NATIVE is not None


def _native():
    if NATIVE is None:
        raise RuntimeError("the compiled observer kernels are not available (not built, or FCNQUANT_NO_NATIVE is set)")
    return NATIVE


def observe(values: np.ndarray, counts: np.ndarray, shift: int) -> tuple[float, float]:
    """Returns (min, max) of ``values`` (flat float32; +inf, -inf when empty) after adding their bins to ``counts``.

    ``counts``: the int64 histogram of ``2**(32 - shift)`` bins, updated in place. Raises RuntimeError when the
    kernels are not available (check :func:`available` first).
    """
    return _native().observe(values, counts, shift)


def observe_lanes(values: np.ndarray, lanes: np.ndarray, shift: int) -> tuple[float, float]:
    """Returns (min, max) of ``values`` after adding their bins to the two int32 ``lanes`` (``2 * 2**(32 - shift)``).

    Bin ``k``'s count is ``lanes[2k] + lanes[2k + 1]``; the caller keeps every lane below 2**31.
    """
    return _native().observe_lanes(values, lanes, shift)


def fold_lanes(lanes: np.ndarray, counts: np.ndarray) -> None:
    """Adds the two int32 ``lanes`` of every bin to the int64 ``counts`` (in place)."""
    if NATIVE is None:
        counts += lanes.reshape(-1, 2).sum(axis=1, dtype=np.int64)
    else:
        NATIVE.fold_lanes(lanes, counts)
