"""A fixed-range value histogram for the report's activation plots (numpy only).

The bins are fixed before any data is seen (from the calibration table's range), so the result does not depend on
the order of images. Values outside the range land in the first or last bin; the exact observed min and max are
kept. To stay cheap next to inference, each update bins at most ``max_values`` values, taken at an even stride
(a deterministic subsample: the same images always give the same histogram). :func:`observe_images` updates one
image at a time, so histograms of disjoint image lists ``merge`` into exactly the one of all of them.
"""
from __future__ import annotations

import math

import numpy as np


class FixedHistogram:
    """Counts of values in ``bins`` equal bins over ``[lo, hi]`` plus the exact observed min/max."""

    def __init__(self, lo: float, hi: float, bins: int = 120, max_values: int = 1 << 18) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"histogram range must be finite, got [{lo}, {hi}]")
        if hi <= lo:
            hi = lo + 1.0
        self.edges = np.linspace(lo, hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.max_values = int(max_values)
        self.min = math.inf
        self.max = -math.inf

    def update(self, x: np.ndarray) -> None:
        """Adds (a strided subsample of) the finite values of ``x``; the min/max use every value."""
        flat = np.asarray(x).reshape(-1)
        if flat.size == 0:
            return
        lo_val, hi_val = float(np.nanmin(flat)), float(np.nanmax(flat))
        if math.isfinite(lo_val):
            self.min = min(self.min, lo_val)
        if math.isfinite(hi_val):
            self.max = max(self.max, hi_val)
        step = max(1, -(-flat.size // self.max_values))
        sample = flat[::step].astype(np.float64)
        sample = sample[np.isfinite(sample)]
        lo, hi = self.edges[0], self.edges[-1]
        bins = self.counts.size
        idx = np.floor((sample - lo) * (bins / (hi - lo))).astype(np.int64)
        np.clip(idx, 0, bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=bins)

    def merge(self, other: "FixedHistogram") -> "FixedHistogram":
        """Adds ``other`` (same bins) into this histogram and returns self."""
        if other.edges.shape != self.edges.shape or not np.array_equal(other.edges, self.edges):
            raise ValueError("histograms with different bins cannot be merged")
        self.counts += other.counts
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self


def observe_images(hists: dict[str, FixedHistogram], values: dict[str, np.ndarray], n: int) -> None:
    """Updates each ``hists[name]`` with the first ``n`` images of the batch ``values[name]``, one at a time."""
    for name, h in hists.items():
        batch = values[name]
        for i in range(n):
            h.update(batch[i])
