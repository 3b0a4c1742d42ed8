"""Per-channel statistics of an NCHW activation (min, max, mean, std), streaming and mergeable: numpy only."""
from __future__ import annotations

import numpy as np

from fcnquant.recover.ordered_sum import OrderedSum


class ChannelStats:
    """Running per-channel min / max / count / sum / sum of squares (float64) over axes other than 1.

    Starts at the identity (min +inf, max -inf, zero sums), so ``merge`` of two equals observing both inputs. The
    statistics of a shard after the first are made with ``record=True`` (:meth:`empty`): its sums then merge bit
    for bit, as if one pass had observed both shards' batches in turn (:mod:`fcnquant.recover.ordered_sum`).
    """

    def __init__(self, minimum: np.ndarray, maximum: np.ndarray, count: int, total: OrderedSum,
                 total_sq: OrderedSum) -> None:
        self.minimum, self.maximum, self.count = minimum, maximum, count
        self._total, self._total_sq = total, total_sq

    @classmethod
    def empty(cls, channels: int, *, record: bool = False) -> ChannelStats:
        """Returns the identity element for ``channels`` channels."""
        return cls(np.full(channels, np.inf), np.full(channels, -np.inf), 0,
                   OrderedSum(np.zeros(channels), record=record), OrderedSum(np.zeros(channels), record=record))

    @property
    def total(self) -> np.ndarray:
        """The per-channel sums."""
        return self._total.total

    @property
    def total_sq(self) -> np.ndarray:
        """The per-channel sums of squares."""
        return self._total_sq.total

    def update(self, x: np.ndarray) -> None:
        """Adds a batch (N, C, ...) to the statistics; raises ValueError on a channel mismatch or NaN/Inf."""
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[1] != len(self.minimum):
            raise ValueError(f"expected (N, {len(self.minimum)}, ...), got shape {x.shape}")
        flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        if not np.isfinite(flat).all():
            raise ValueError("activation has NaN/Inf values")
        if flat.shape[1] == 0:
            return
        self.minimum = np.minimum(self.minimum, flat.min(axis=1))
        self.maximum = np.maximum(self.maximum, flat.max(axis=1))
        f64 = flat.astype(np.float64)
        self._total.add(f64.sum(axis=1))
        self._total_sq.add(np.einsum("ij,ij->i", f64, f64))
        self.count += flat.shape[1]

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Returns the statistics of both inputs together (``other``: the images after these)."""
        total = OrderedSum(self.total, record=self._total.recording)
        total_sq = OrderedSum(self.total_sq, record=self._total_sq.recording)
        for mine, theirs, merged in ((self._total, other._total, total), (self._total_sq, other._total_sq, total_sq)):
            for s in mine.terms or ():
                merged.add(s)
            merged.merge(theirs)
        return ChannelStats(np.minimum(self.minimum, other.minimum), np.maximum(self.maximum, other.maximum),
                            self.count + other.count, total, total_sq)

    def mean(self) -> np.ndarray:
        """Returns the per-channel mean (NaN before any update)."""
        return self.total / self.count if self.count else np.full(len(self.total), np.nan)

    def std(self) -> np.ndarray:
        """Returns the per-channel population standard deviation (NaN before any update)."""
        if not self.count:
            return np.full(len(self.total), np.nan)
        m = self.total / self.count
        return np.sqrt(np.maximum(self.total_sq / self.count - m * m, 0.0))

    def lower_bound(self, rule: str = "min") -> np.ndarray:
        """Returns a per-channel lower bound: ``"min"`` the observed minimum, ``"3sigma"`` mean - 3 std.

        ``"3sigma"`` is the paper's beta - 3 gamma (from BatchNorm) computed from the data, for BN-folded models.
        """
        if rule == "min":
            return self.minimum.copy()
        if rule == "3sigma":
            return self.mean() - 3.0 * self.std()
        raise ValueError(f"unknown lower-bound rule '{rule}'; choose 'min' or '3sigma'")
