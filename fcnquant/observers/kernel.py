"""The compiled observer kernels (numba): bit-pattern histogram counts and min/max of a tensor in one pass.

Both kernels add one count per value to the bins of :class:`~fcnquant.observers.HistogramObserver`
(``u[i] >> shift``, bin for bin) and return the ``(min, max)`` of ``f``, the same memory viewed as float32, in the
same loop (each value is read from memory once). NaN compares false, so it never becomes an extreme; NaN and
+-Inf land in the histogram's non-finite bins, which the caller checks (:mod:`fcnquant.observers.fused`).

* ``observe(u, f, counts, shift)`` counts into an int64 histogram, one lane (the plain form; the collector uses
  the lanes);
* ``observe_lanes(u, f, lanes, shift)`` counts into two int32 lanes interleaved per bin (``lanes[2 * bin + i % 2]``):
  consecutive values update different words, so a value never waits for the store of its neighbour in the
  same bin (ReLU zeros, neighbouring pixels), and the lanes take half the cache of int64 counts.
  Measured on the bench's fcn8s-like tensors: 0.76 ns/value against 0.99 for one int64 lane (CPU time).
  The caller folds the lanes into the exact int64 counts before int32 could overflow.

Compiled with ``nogil=True`` (they run beside onnxruntime in the collector's observer thread) and ``cache=True``
(compiled once, ~1 s, then loaded from numba's cache).

numba is imported on first use, not with this module: :func:`load` (or reading ``KERNEL``, ``LANES_KERNEL`` or
``FOLD_KERNEL``) imports it and builds the kernels, :func:`warm_up` also loads their compiled code. That costs
~0.55 s of CPU per process (numba's import ~0.19 s; its first call ~0.35 s, which imports numba's numpy
support and through it scipy.linalg); a run too small to win it back keeps to the numpy observers without paying
it (:func:`fcnquant.observers.fused.worth_compiling`). ``KERNEL`` is None when numba is not installed, fails to
import, or ``FCNQUANT_NO_NUMBA=1`` is set; the numpy observers are used then.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading

import numpy as np

log = logging.getLogger(__name__)

DISABLE_ENV = "FCNQUANT_NO_NUMBA"


def _observe_py(u, f, counts, shift):
    """One lane: ``counts[u[i] >> shift] += 1``; returns (min, max) of ``f`` (compiled by numba)."""
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    for i in range(u.size):
        counts[u[i] >> shift] += 1
        v = f[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


def _observe_lanes_py(u, f, lanes, shift):
    """Two interleaved lanes: value ``i`` counts in ``lanes[2 * (u[i] >> shift) + i % 2]`` (compiled by numba)."""
    lo0 = np.float32(np.inf)
    hi0 = np.float32(-np.inf)
    lo1, hi1 = lo0, hi0
    n = u.size
    m = n - (n & 1)
    for i in range(0, m, 2):
        lanes[(u[i] >> shift) << 1] += 1
        lanes[((u[i + 1] >> shift) << 1) | 1] += 1
        v = f[i]
        w = f[i + 1]
        lo0 = v if v < lo0 else lo0
        hi0 = v if v > hi0 else hi0
        lo1 = w if w < lo1 else lo1
        hi1 = w if w > hi1 else hi1
    if m < n:
        lanes[(u[m] >> shift) << 1] += 1
        v = f[m]
        lo0 = v if v < lo0 else lo0
        hi0 = v if v > hi0 else hi0
    return (lo0 if lo0 < lo1 else lo1), (hi0 if hi0 > hi1 else hi1)


def _fold_py(lanes, counts):
    """``counts[k] += lanes[2k] + lanes[2k + 1]`` for every bin (compiled by numba)."""
    for k in range(counts.size):
        a = lanes[2 * k]
        b = lanes[2 * k + 1]
        if a | b:
            counts[k] += np.int64(a) + np.int64(b)


def numba_jit(fn, **options):
    """Returns ``fn`` compiled by numba (nogil, cached), or None when numba is missing or disabled."""
    if disabled():
        log.info("%s is set: %s uses numpy", DISABLE_ENV, fn.__name__)
        return None
    try:
        import numba
    except Exception as exc:  # ImportError, or a numba that does not match the installed numpy
        log.info("numba is not available (%s): %s uses numpy", exc, fn.__name__)
        return None
    return numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", **options)(fn)


_NAMES = ("KERNEL", "LANES_KERNEL", "FOLD_KERNEL")
_LOCK = threading.Lock()


def disabled() -> bool:
    """Whether ``FCNQUANT_NO_NUMBA`` turns the compiled kernels off."""
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def available() -> bool:
    """Whether the kernels can be compiled here (numba installed, not disabled), without importing numba.

    A numba that is installed but fails to import still answers True; :func:`load` then returns False.
    """
    if "KERNEL" in globals():
        return globals()["KERNEL"] is not None
    return not disabled() and importlib.util.find_spec("numba") is not None


def loaded() -> bool:
    """Whether the kernels are built in this process already (then using them costs nothing more)."""
    return globals().get("KERNEL") is not None


def load() -> bool:
    """Builds the kernels on first call (imports numba); returns True when they are usable."""
    if "KERNEL" not in globals():
        with _LOCK:  # the collector's observer thread and the main thread may both ask
            if "KERNEL" not in globals():
                kernels = (numba_jit(_observe_py), numba_jit(_observe_lanes_py), numba_jit(_fold_py))
                globals().update(zip(_NAMES[1:], kernels[1:]))
                globals()["KERNEL"] = kernels[0]  # last: its presence says the others are set
    return globals()["KERNEL"] is not None


def __getattr__(name: str):
    """``KERNEL``, ``LANES_KERNEL``, ``FOLD_KERNEL``: the compiled kernels (built on first read), or None."""
    if name in _NAMES:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check() -> None:
    if not load():
        raise RuntimeError("the compiled observer kernel is not available (numba missing or disabled)")


def observe(u: np.ndarray, f: np.ndarray, counts: np.ndarray, shift: int) -> tuple[float, float]:
    """Returns (min, max) of ``f`` (flat float32; +inf, -inf when empty) after adding its bins to ``counts``.

    ``u`` is ``f.view(np.uint32)``; ``counts`` the int64 histogram of ``2**(32 - shift)`` bins, updated in place.
    Raises RuntimeError when the compiled kernel is not available (check ``KERNEL`` first).
    """
    _check()
    lo, hi = globals()["KERNEL"](u, f, counts, np.uint32(shift))
    return float(lo), float(hi)


def observe_lanes(u: np.ndarray, f: np.ndarray, lanes: np.ndarray, shift: int) -> tuple[float, float]:
    """Returns (min, max) of ``f`` after adding its bins to the two int32 ``lanes`` (``2 * 2**(32 - shift)``).

    Bin ``k``'s count is ``lanes[2k] + lanes[2k + 1]``; the caller keeps every lane below 2**31.
    """
    _check()
    lo, hi = globals()["LANES_KERNEL"](u, f, lanes, np.uint32(shift))
    return float(lo), float(hi)


def fold_lanes(lanes: np.ndarray, counts: np.ndarray) -> None:
    """Adds the two int32 ``lanes`` of every bin to the int64 ``counts`` (in place)."""
    fold = globals()["FOLD_KERNEL"] if load() else None
    if fold is None:
        counts += lanes.reshape(-1, 2).sum(axis=1, dtype=np.int64)
    else:
        fold(lanes, counts)


def warm_up() -> None:
    """Builds the kernels and loads the two the collector uses (from numba's cache, or compiling them); nothing when
    unavailable.

    The collector calls it in its observer thread while an image runs, so no timed loop pays for it.
    """
    if not load():
        return
    f = np.zeros(3, np.float32)
    counts = np.zeros(1 << 9, np.int64)
    lanes = np.zeros(2 << 9, np.int32)
    observe_lanes(f.view(np.uint32), f, lanes, 23)  # the two the collector uses (observe loads on its first call)
    fold_lanes(lanes, counts)
