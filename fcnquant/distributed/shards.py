"""Splitting an image list into shards and merging the shards' results exactly (numpy only, no Ray).

Shards are the contiguous slices of :class:`fcnquant.calibrate.collect.Shard` (``--shard i/n``), so shard i of a
cluster run holds exactly the images ``fcnquant calibrate --shard i/n`` would. Results are merged in shard order,
each shard exactly once (:class:`ShardResults` refuses a second result for a shard and a merge with one missing):

* statistics: :func:`merge_wire`, :func:`fcnquant.calibrate.stats.merge_stats` on the sparse arrays (histogram
  bins add as integers, min/max combine: bit-identical to one run over all the images);
* confusion matrices: integer sums (identical);

Statistics travel as their sparse ``.npz`` arrays (:func:`stats_to_wire`), not the dense 2^19-bin histograms.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Generic, Iterator, Sequence, TypeVar

import numpy as np

from fcnquant.calibrate.collect import Shard
from fcnquant.calibrate.stats import CalibrationStats, TensorStats
from fcnquant.data import Dataset
from fcnquant.errors import FcnquantError

T = TypeVar("T")


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` (1-based) of ``count``: its image ids."""

    index: int
    count: int
    ids: tuple[str, ...]

    @property
    def label(self) -> str:
        """``"i/n"``, as ``--shard`` writes it."""
        return f"{self.index}/{self.count}"


def plan_shards(ids: Sequence[str], count: int) -> list[ShardPlan]:
    """Returns the non-empty shards of ``ids`` in ``count`` contiguous slices (fewer when there are fewer ids).

    The slices are :meth:`Shard.select`'s, so they concatenate back to ``ids`` in order.
    """
    ids = [str(i) for i in ids]
    if count < 1:
        raise FcnquantError(f"the number of shards must be at least 1, got {count}")
    if not ids:
        raise FcnquantError("no images to distribute")
    count = min(count, len(ids))
    return [ShardPlan(k, count, tuple(Shard(k, count).select(ids))) for k in range(1, count + 1)]


def shard_dataset(dataset: Dataset, ids: Sequence[str]) -> Dataset:
    """Returns ``dataset`` cut to ``ids``, with absolute paths (a worker's current folder is not the driver's)."""
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


def stats_to_wire(stats: CalibrationStats) -> dict[str, Any]:
    """Returns ``stats`` as plain data: the file's metadata and each tensor's sparse state arrays."""
    meta = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != "tensors"}
    return {"meta": meta, "tensors": [(name, ts.state()) for name, ts in stats.tensors.items()]}


def stats_from_wire(wire: dict[str, Any]) -> CalibrationStats:
    """Returns the statistics :func:`stats_to_wire` wrote (validated like a loaded file)."""
    meta = dict(wire["meta"])
    bits, skip = int(meta["mantissa_bits"]), bool(meta["skip_nonfinite"])
    tensors = {name: TensorStats.from_state(state, bits, skip_nonfinite=skip, name=name)
               for name, state in wire["tensors"]}
    return CalibrationStats(tensors=tensors, **meta)


def merge_wire(parts: Sequence[dict[str, Any]], model_name: str) -> CalibrationStats:
    """Returns the exact merge of the shards' :func:`stats_to_wire` data, in shard order, as one unsharded run's
    statistics.

    The same checks and result as :func:`fcnquant.calibrate.stats.merge_stats` (same model, preset, histogram
    bits and tensors; image sets disjoint), computed on the sparse arrays: per tensor the non-zero bins of all
    shards are added as int64 (exact), min/max combine, counts add; the dense statistics are built once.
    """
    from fcnquant.errors import CalibrationError

    parts = list(parts)
    if not parts:
        raise CalibrationError("nothing to merge")
    first = parts[0]["meta"]
    names = [n for n, _ in parts[0]["tensors"]]
    for k, p in enumerate(parts[1:], start=2):
        meta = p["meta"]
        for key in ("model_sha256", "mantissa_bits", "preset", "skip_nonfinite"):
            if meta[key] != first[key]:
                raise CalibrationError(f"shard {k} differs from shard 1 in {key}: {meta[key]!r} vs {first[key]!r}")
        if [n for n, _ in p["tensors"]] != names:
            raise CalibrationError(f"shard {k} observed different tensors than shard 1")
    ids = [i for p in parts for i in p["meta"]["image_ids"]]
    if len(set(ids)) != len(ids):
        raise CalibrationError("an image appears in more than one shard: statistics overlap")
    tensors = []
    for t, name in enumerate(names):
        states = [p["tensors"][t][1] for p in parts]
        index = np.concatenate([s["index"] for s in states]).astype(np.int64)
        counts = np.concatenate([s["hist"] for s in states]).astype(np.int64)
        bins, where = np.unique(index, return_inverse=True)
        hist = np.zeros(len(bins), dtype=np.int64)
        np.add.at(hist, where, counts)
        ranges = np.stack([np.asarray(s["range"], dtype=np.float64) for s in states])
        tensors.append((name, {
            "range": np.array([ranges[:, 0].min(), ranges[:, 1].max()], dtype=np.float64),
            "count": np.sum([np.asarray(s["count"], dtype=np.int64) for s in states], axis=0),
            "index": bins.astype(np.uint32), "hist": hist,
        }))
    meta = dict(first, image_ids=ids, model_name=model_name, shard=None)
    return stats_from_wire({"meta": meta, "tensors": tensors})


def sum_confusions(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Returns the sum of confusion matrices (int64; exact)."""
    out = np.zeros_like(np.asarray(parts[0], dtype=np.int64))
    for p in parts:
        out += np.asarray(p, dtype=np.int64)
    return out
