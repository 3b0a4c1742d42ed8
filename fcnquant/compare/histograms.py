"""The report's activation histograms: fixed-range histograms filled during the drift pass, or drawn from a
calibration statistics file; each with the calibration's clipping range.

The bins of a :class:`FixedHistogram` are fixed before any data is seen (from the calibration table's range), so
the result does not depend on the order of images. Values outside the range land in the first or last bin; the
exact observed min and max are kept. To stay cheap next to inference, each update bins at most ``max_values``
values, taken at an even stride (a deterministic subsample: the same images always give the same histogram).
:func:`observe_images` updates one image at a time, so histograms of disjoint image lists ``merge`` into exactly
the one of all of them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fcnquant.compare._json import num
from fcnquant.errors import CalibrationError

if TYPE_CHECKING:
    from fcnquant.compare.drift.metrics import LayerDrift
    from fcnquant.compare.tensors.pairing import TensorPair

log = logging.getLogger(__name__)

HISTOGRAM_LAYERS = 6  # activation histograms drawn in the HTML report (the worst layers that have data)
HISTOGRAM_BINS = 120


@dataclass(frozen=True)
class ActivationHistogram:
    """A float activation's value histogram with the calibration's clipping range, for the HTML report."""

    tensor: str
    edges: tuple[float, ...]  # len(counts) + 1 bin edges
    counts: tuple[int, ...]
    lo: float | None = None  # chosen clipping range (calibration table), None when unknown
    hi: float | None = None
    min: float | None = None  # observed range
    max: float | None = None
    source: str = "compare"  # "stats" (calibration statistics file) or "compare" (values seen during compare)

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"tensor": self.tensor, "edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts],
                "lo": num(self.lo), "hi": num(self.hi), "min": num(self.min), "max": num(self.max),
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "ActivationHistogram":
        """Returns the histogram stored by ``to_dict``."""
        return cls(tensor=d["tensor"], edges=tuple(d["edges"]), counts=tuple(d["counts"]), lo=d.get("lo"),
                   hi=d.get("hi"), min=d.get("min"), max=d.get("max"), source=d.get("source", "compare"))


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


def table_histograms(entries: dict, measured: Sequence[TensorPair]) -> dict[str, FixedHistogram]:
    """Returns a FixedHistogram over each table tensor's range, for the measured tensors the table lists."""
    out: dict[str, FixedHistogram] = {}
    for p in measured:
        e = entries.get(p.float_name)
        if e is None:
            continue
        lo, hi = min(e.min, e.lo), max(e.max, e.hi)
        if math.isfinite(lo) and math.isfinite(hi):
            out[p.float_name] = FixedHistogram(lo, hi, HISTOGRAM_BINS)
    return out


def integer_counts(counts: np.ndarray) -> tuple[int, ...]:
    """Returns fractional bin counts as integers with the same total (rounding the running sum)."""
    cum = np.rint(np.cumsum(np.asarray(counts, dtype=np.float64)))
    return tuple(int(c) for c in np.diff(np.concatenate(([0.0], cum))))


def activation_histograms(layers: Sequence[LayerDrift], hists: dict[str, FixedHistogram], stats, entries: dict,
                          top: int, notes: list[str]) -> tuple[ActivationHistogram, ...]:
    """Returns the activation histograms of the ``top`` worst layers (by accumulated SNR) that have data: from the
    calibration statistics file ``stats`` when given, else from ``hists`` (filled during the drift pass).

    ``entries``: the calibration table's {tensor: TensorEntry} (the clipping ranges). A note is added to ``notes``
    when the statistics file has none of the layers.
    """
    if top <= 0 or (stats is None and not hists):
        return ()
    ranked = sorted(layers, key=lambda layer: (math.isnan(layer.accumulated.snr_db), layer.accumulated.snr_db))
    out: list[ActivationHistogram] = []
    if stats is not None:
        from fcnquant.calibrate.stats import CalibrationStats

        st = CalibrationStats.load(stats)
        for layer in ranked:
            ts = st.tensors.get(layer.float_name)
            if ts is None or ts.count == 0:
                continue
            e = entries.get(layer.float_name)
            lo = min(ts.min, e.lo) if e is not None else ts.min
            hi = max(ts.max, e.hi) if e is not None else ts.max
            if not hi > lo:
                continue
            try:
                counts, edges = ts.hist.to_linear(HISTOGRAM_BINS, hi, absolute=False, lower=lo, vmin=ts.min,
                                                  vmax=ts.max)
            except CalibrationError as exc:
                log.warning("no histogram for %s: %s", layer.float_name, exc)
                continue
            out.append(ActivationHistogram(
                tensor=layer.float_name, edges=tuple(float(v) for v in edges),
                counts=integer_counts(counts), lo=e.lo if e is not None else None,
                hi=e.hi if e is not None else None, min=ts.min, max=ts.max, source="stats"))
            if len(out) == top:
                break
        if not out:
            notes.append(f"statistics file {stats} has none of the quantized activations")
        return tuple(out)
    for layer in ranked:
        h = hists.get(layer.float_name)
        if h is None or not h.counts.any():
            continue
        e = entries[layer.float_name]
        out.append(ActivationHistogram(
            tensor=layer.float_name, edges=tuple(float(v) for v in h.edges), counts=tuple(int(c) for c in h.counts),
            lo=e.lo, hi=e.hi, min=h.min if math.isfinite(h.min) else None,
            max=h.max if math.isfinite(h.max) else None, source="compare"))
        if len(out) == top:
            break
    return tuple(out)
