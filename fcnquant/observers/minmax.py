"""Exact running minimum and maximum of a stream of float32 tensors."""
from __future__ import annotations

import numpy as np

from fcnquant.errors import CalibrationError
from fcnquant.observers.base import NonFiniteError, as_float32


class MinMaxObserver:
    """Tracks the exact minimum, maximum and count of every value it has seen.

    Starts at the identity (``min=+inf``, ``max=-inf``, ``count=0``). After any sequence of updates and merges,
    ``min``/``max`` equal ``np.min``/``np.max`` of the concatenation of all the (float32) data exactly, whatever the
    batch sizes or order (a zero extreme is reported as +0.0, whichever signed zero the data held, so the values
    are bit-identical too). Non-finite values raise :class:`NonFiniteError` (state unchanged) unless
    ``skip_nonfinite=True``; then they are left out of min/max/count and counted in ``nonfinite``.
    The common all-finite case costs two vectorised passes (``x.min()``, ``x.max()``) and no more.
    """

    def __init__(self, *, skip_nonfinite: bool = False) -> None:
        self.skip_nonfinite = skip_nonfinite
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0
        self.nonfinite = 0

    def update(self, x: np.ndarray) -> None:
        """Adds the values of ``x`` (any shape; non-float32 input is converted to float32 first)."""
        a = as_float32(x)
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        n = a.size
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates through min/max, Inf shows as an extreme
            finite = a[np.isfinite(a)]
            bad = n - finite.size
            if not self.skip_nonfinite:
                raise NonFiniteError(bad)
            self.nonfinite += bad
            if finite.size == 0:
                return
            lo, hi, n = float(finite.min()), float(finite.max()), finite.size
        # "+ 0.0" turns -0.0 into +0.0, so the result never depends on which signed zero came first
        self.min = min(self.min, lo + 0.0)
        self.max = max(self.max, hi + 0.0)
        self.count += n

    def fold(self, lo: float, hi: float, n: int) -> None:
        """Adds a batch of ``n`` finite values known only by its exact minimum ``lo`` and maximum ``hi``."""
        if n <= 0:
            return
        self.min = min(self.min, float(lo) + 0.0)
        self.max = max(self.max, float(hi) + 0.0)
        self.count += int(n)

    def merge(self, other: MinMaxObserver) -> None:
        """Folds ``other`` into this observer, as if this one had also seen ``other``'s data."""
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite

    def state(self) -> dict[str, np.ndarray]:
        """Returns the state as plain numpy arrays (``range`` = [min, max] float64, ``count`` = [count, nonfinite])."""
        return {
            "range": np.array([self.min, self.max], dtype=np.float64),
            "count": np.array([self.count, self.nonfinite], dtype=np.int64),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], *, skip_nonfinite: bool = False) -> MinMaxObserver:
        """Returns an observer restored from :meth:`state`; raises CalibrationError if the arrays are malformed."""
        try:
            rng = np.asarray(state["range"], dtype=np.float64).reshape(2)
            cnt = np.asarray(state["count"]).reshape(2)
        except (KeyError, ValueError, TypeError) as exc:
            raise CalibrationError(f"malformed min/max state: {exc}") from exc
        if cnt.dtype.kind not in "iu" or (cnt < 0).any():
            raise CalibrationError("malformed min/max state: counts must be non-negative integers")
        obs = cls(skip_nonfinite=skip_nonfinite)
        obs.min, obs.max = float(rng[0]), float(rng[1])
        obs.count, obs.nonfinite = int(cnt[0]), int(cnt[1])
        if obs.count > 0 and not (np.isfinite(obs.min) and np.isfinite(obs.max) and obs.min <= obs.max):
            raise CalibrationError(f"malformed min/max state: range [{obs.min}, {obs.max}] with {obs.count} values")
        if obs.count == 0 and (obs.min, obs.max) != (float("inf"), float("-inf")):
            raise CalibrationError("malformed min/max state: a range without values")
        return obs

    def __repr__(self) -> str:
        return f"MinMaxObserver(min={self.min!r}, max={self.max!r}, count={self.count})"
