"""Statistics as plain sparse arrays: how :class:`CalibrationStats` travel between processes and merge exactly.

A tensor's dense histogram has 2^19 bins; its sparse state (non-zero bins and their counts) is a few thousand.
Pickling a :class:`CalibrationStats` (e.g. a shard's result coming back from a Ray worker) goes through
:func:`stats_to_wire`, and :func:`merge_wire` merges shards on the sparse arrays: per tensor the non-zero bins of
all shards are added as int64 (exact), min/max combine, counts add; the dense statistics are built once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from fcnquant.calibrate.stats import CalibrationStats, TensorStats
from fcnquant.errors import CalibrationError


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
