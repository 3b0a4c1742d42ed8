"""A float64 sum of per-batch arrays that merges across shards bit for bit (numpy only).

Floating-point addition is not associative: the sum of a shard's batches added to the sum of the shards before
it differs in the last bits from one pass adding every batch in turn. An :class:`OrderedSum` of a shard that does
not start the image list therefore *records* its batch sums instead of adding them (``record=True``); merging it
into the sum of the images before replays those additions in order. The merged sum is then the one of a single
pass over all the images, bit for bit, whenever the shards' batches are the single pass's batches (always with
batches of one image; with larger batches, when every shard boundary falls on a batch boundary).

Memory: a recording sum holds one array per batch (the shard's batches of a channel vector, or of a channel x
kernel table), the first shard's sum holds one.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class OrderedSum:
    """``total`` of the arrays given to :meth:`add`, in order, starting from ``start`` (None: the first array).

    ``record=True`` keeps the arrays instead (``total`` stays ``start``) until :meth:`merge` replays them onto
    the sum of the images before.
    """

    def __init__(self, start: np.ndarray | None = None, *, record: bool = False) -> None:
        self.total = start
        self.terms: list[np.ndarray] | None = [] if record else None

    @property
    def recording(self) -> bool:
        return self.terms is not None

    def add(self, s: np.ndarray) -> None:
        """Adds ``s`` to the total (or records it)."""
        if self.terms is not None:
            self.terms.append(s)
        else:
            self.total = s if self.total is None else self.total + s

    def pending(self) -> Iterator[np.ndarray]:
        """Yields what merging this sum into the one before adds: the recorded arrays, else the total."""
        if self.terms is not None:
            yield from self.terms
        elif self.total is not None:
            yield self.total

    def merge(self, other: "OrderedSum") -> None:
        """Adds ``other`` (the sum of the images after these) in its order."""
        for s in other.pending():
            self.add(s)


class OrderedMean:
    """A running float64 mean of per-batch sums: an :class:`OrderedSum` and the number of values summed.

    Subclasses define ``update(x)``, which passes a batch's sums and their count to :meth:`add`; ``record``: see
    :class:`OrderedSum` (a shard after the first records, so the merge is bit for bit).
    """

    def __init__(self, *, record: bool = False) -> None:
        self._sum = OrderedSum(record=record)
        self.count = 0

    @property
    def sum(self) -> np.ndarray | None:
        """The sums (None before any update)."""
        return self._sum.total

    def add(self, s: np.ndarray, count: int) -> None:
        """Adds one batch's sums ``s`` over ``count`` values each."""
        self._sum.add(s)
        self.count += count

    def merge(self, other: "OrderedMean") -> None:
        """Adds what ``other`` observed (on the images after these)."""
        self._sum.merge(other._sum)
        self.count += other.count

    @property
    def mean(self) -> np.ndarray:
        """Returns the means in float64; raises ValueError before any update."""
        if self.sum is None or self.count == 0:
            raise ValueError("no values were observed")
        return self.sum / self.count
