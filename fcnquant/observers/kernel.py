"""The compiled observer kernel (numba): bit-pattern histogram counts and min/max of a tensor in one pass.

``observe(u, f, counts, shift)`` adds ``1`` to ``counts[u[i] >> shift]`` for every value (the bins of
:class:`~fcnquant.observers.HistogramObserver`, bin for bin) and returns the ``(min, max)`` of ``f``, the same
memory viewed as float32, read once. NaN compares false, so it never becomes an extreme; NaN and +-Inf land in the
histogram's non-finite bins, which the caller checks (:func:`fcnquant.observers.fused.update_stats`).

The kernel is compiled with ``nogil=True`` (it runs beside onnxruntime in the collector's observer thread) and
``cache=True`` (compiled once, then loaded from numba's cache in ~0.1 s). ``KERNEL`` is None when numba is not
installed, fails to import, or ``FCNQUANT_NO_NUMBA=1`` is set; the numpy observers are used then.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

DISABLE_ENV = "FCNQUANT_NO_NUMBA"


def _observe_py(u: np.ndarray, f: np.ndarray, counts: np.ndarray, shift: int) -> tuple[float, float]:
    """The kernel's loop (pure Python here; compiled by numba into ``KERNEL``)."""
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    for i in range(u.size):
        counts[u[i] >> shift] += 1
        v = f[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


def _compile():
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        log.info("%s is set: observers use numpy", DISABLE_ENV)
        return None
    try:
        import numba
    except Exception as exc:  # ImportError, or a numba that does not match the installed numpy
        log.info("numba is not available (%s): observers use numpy", exc)
        return None
    return numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")(_observe_py)


KERNEL = _compile()


def observe(u: np.ndarray, f: np.ndarray, counts: np.ndarray, shift: int) -> tuple[float, float]:
    """Returns (min, max) of ``f`` (flat float32; +inf, -inf when empty) after adding its bins to ``counts``.

    ``u`` is ``f.view(np.uint32)``; ``counts`` the int64 histogram of ``2**(32 - shift)`` bins, updated in place.
    Raises RuntimeError when the compiled kernel is not available (check ``KERNEL`` first).
    """
    if KERNEL is None:
        raise RuntimeError("the compiled observer kernel is not available (numba missing or disabled)")
    lo, hi = KERNEL(u, f, counts, np.uint32(shift))
    return float(lo), float(hi)
