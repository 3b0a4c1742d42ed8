"""Splitting an image list into contiguous shards, and gathering one result per shard (no Ray, no onnx).

A shard is a contiguous slice of the id list: shard i of n holds ``ids[(i-1)*L//n : i*L//n]``, so the n slices
concatenate back to the list in order. ``fcnquant calibrate --shard i/n`` and an executor's shard i of n hold the
same images; results merged in shard order therefore equal one run over the whole list.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Generic, Iterator, Sequence, TypeVar

from fcnquant.errors import DataError, FcnquantError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (1-based) of ``count`` equal contiguous slices of an id list (``--shard i/n``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise DataError(f"bad shard {self.index}/{self.count}: shards are numbered 1..n, e.g. 1/4 ... 4/4")

    @classmethod
    def parse(cls, spec: str | Shard | tuple[int, int]) -> Shard:
        """Returns the shard of ``"i/n"`` (1 <= i <= n) or an ``(i, n)`` tuple."""
        if isinstance(spec, Shard):
            return spec
        if isinstance(spec, tuple):
            return cls(int(spec[0]), int(spec[1]))
        try:
            i, n = str(spec).split("/")
            return cls(int(i), int(n))
        except ValueError:
            raise DataError(f"bad shard '{spec}'; expected i/n with 1 <= i <= n, e.g. 2/4") from None

    def select(self, ids: Sequence[str]) -> list[str]:
        """Returns this shard's slice: ``ids[(i-1)*L//n : i*L//n]``; the n slices concatenate back to ``ids``."""
        n_ids = len(ids)
        return list(ids[(self.index - 1) * n_ids // self.count: self.index * n_ids // self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` (1-based) of ``count``: its image ids, and how many ids of the whole list come before it."""

    index: int
    count: int
    ids: tuple[str, ...]
    start: int = 0

    @property
    def label(self) -> str:
        """``"i/n"``, as ``--shard`` writes it."""
        return f"{self.index}/{self.count}"


def plan_shards(ids: Sequence[str], count: int, *, allow_empty: bool = False) -> list[ShardPlan]:
    """Returns the non-empty shards of ``ids`` in ``count`` contiguous slices (fewer when there are fewer ids).

    The slices are :meth:`Shard.select`'s, so they concatenate back to ``ids`` in order. An empty ``ids`` is an
    error unless ``allow_empty`` (then one empty shard).
    """
    ids = [str(i) for i in ids]
    if count < 1:
        raise FcnquantError(f"the number of shards must be at least 1, got {count}")
    if not ids:
        if allow_empty:
            return [ShardPlan(1, 1, ())]
        raise FcnquantError("no images to distribute")
    count = min(count, len(ids))
    plans, start = [], 0
    for k in range(1, count + 1):
        part = tuple(Shard(k, count).select(ids))
        plans.append(ShardPlan(k, count, part, start))
        start += len(part)
    return plans


def shard_dataset(dataset, ids: Sequence[str]):
    """Returns ``dataset`` (a :class:`fcnquant.data.Dataset`) cut to ``ids``, with absolute paths (a worker's
    current folder is not the driver's)."""
    from fcnquant.data import Dataset

    dataset.check_ids(list(ids))
    absolute = lambda p: type(p)(os.path.abspath(p))  # noqa: E731
    return Dataset(
        root=absolute(dataset.root), split=dataset.split, ids=list(ids),
        images={i: absolute(dataset.images[i]) for i in ids},
        masks={i: absolute(dataset.masks[i]) for i in ids} if dataset.masks is not None else None,
    )


class ShardResults(Generic[T]):
    """The results of ``count`` shards, each accepted once, read back in shard order."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._results: dict[int, T] = {}

    def add(self, index: int, result: T) -> None:
        """Stores shard ``index``'s result; FcnquantError if that shard already has one (merged twice)."""
        if not 1 <= index <= self.count:
            raise FcnquantError(f"shard {index} is outside 1..{self.count}")
        if index in self._results:
            raise FcnquantError(f"shard {index}/{self.count} returned twice; refusing to merge it twice")
        self._results[index] = result

    def __len__(self) -> int:
        return len(self._results)

    def ordered(self) -> list[T]:
        """Returns the results in shard order; FcnquantError naming the shards that have none."""
        missing = [k for k in range(1, self.count + 1) if k not in self._results]
        if missing:
            raise FcnquantError(f"shard(s) {', '.join(map(str, missing))} of {self.count} have no result")
        return [self._results[k] for k in range(1, self.count + 1)]

    def __iter__(self) -> Iterator[T]:
        return iter(self.ordered())
