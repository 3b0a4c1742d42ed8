"""Calibration statistics and evaluation over a Ray cluster, merged exactly (what ``--ray`` runs).

    from fcnquant.distributed import collect, evaluate
    run = collect("fcn8s.onnx", dataset, ids, address="auto", shards=8)   # run.result: CalibrationStats
    run = evaluate("fcn8s.int8.onnx", dataset, ids, address="auto")       # run.result: EvalResult

``address``: ``"local"`` (default) starts a local Ray instance for the call; ``"auto"`` or ``"HOST:PORT"`` joins a
running cluster (see :mod:`fcnquant.distributed.cluster`). ``shards`` defaults to the cluster's CPU count. The
results equal a single-process run over the same images: statistics bit for bit, confusion matrix exactly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Generic, Sequence, TypeVar

from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.distributed.cluster import LOCAL, cluster_cpus, import_ray, ray_session
from fcnquant.distributed.shards import merge_wire, plan_shards, shard_dataset, sum_confusions

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed(Generic[T]):
    """A merged result and how its shards ran (:class:`~fcnquant.distributed.ray_backend.ShardReport`)."""

    result: T
    shards: tuple = field(default=())
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Returns the shard reports and wall seconds as a JSON-ready dict (the result has its own to_dict)."""
        return {"seconds": round(self.seconds, 3), "shards": [s.to_dict() for s in self.shards]}


def _plans(ray, ids: Sequence[str], shards: int | None):
    return plan_shards(ids, shards if shards is not None else cluster_cpus(ray))


def collect(
    model: str | os.PathLike[str],
    dataset,
    ids: Sequence[str],
    preset=None,
    batch_size: int = 1,
    *,
    address: str | None = LOCAL,
    shards: int | None = None,
    size=None,
    mean=None,
    std=None,
    skip_nonfinite: bool = False,
    progress: bool = True,
) -> Distributed[CalibrationStats]:
    """Returns the statistics of ``model`` over ``ids`` of ``dataset``, collected in shards on a Ray cluster.

    Equal (bit for bit) to :func:`fcnquant.calibrate.collect.collect_stats` over the same ids, including the
    image order; ``model_name`` is the file's name as in a local run.
    """
    import_ray()
    from fcnquant.distributed import ray_backend as rb

    options = dict(preset=preset, batch_size=batch_size, size=size, mean=mean, std=std,
                   skip_nonfinite=skip_nonfinite)
    with ray_session(address) as ray:
        t0 = time.perf_counter()
        plans = _plans(ray, ids, shards)
        sha, ref, _ = rb.put_model(model)
        jobs = [(p, (shard_dataset(dataset, p.ids), sha, ref, options)) for p in plans]
        outs, reports = rb.run_shards(rb.collect_task, jobs, desc="calibrating (ray)", progress=progress)
        seconds = time.perf_counter() - t0
    merged = merge_wire(outs, os.path.basename(os.fspath(model)))
    return Distributed(merged, tuple(reports), seconds)


def evaluate(
    model: str | os.PathLike[str],
    dataset,
    ids: Sequence[str],
    preset=None,
    batch_size: int = 1,
    *,
    address: str | None = LOCAL,
    shards: int | None = None,
    size=None,
    mean=None,
    std=None,
    threads: int = 0,
    progress: bool = True,
):
    """Returns the ``Distributed[EvalResult]`` of ``model`` on ``ids`` of ``dataset`` (a labelled Dataset).

    The confusion matrix is the exact sum of the shards' (identical to one process over the same ids), so mIoU,
    per-class IoU and pixel accuracy are too; ``seconds``/``images_per_s`` are the cluster run's wall time.
    """
    import_ray()
    from fcnquant.distributed import ray_backend as rb
    from fcnquant.evaluate import result_from_confusion
    from fcnquant.metrics import ConfusionMatrix

    options = dict(preset=preset, batch_size=batch_size, size=size, mean=mean, std=std, threads=threads)
    with ray_session(address) as ray:
        t0 = time.perf_counter()
        plans = _plans(ray, ids, shards)
        sha, ref, name = rb.put_model(model)
        jobs = [(p, (shard_dataset(dataset, p.ids), sha, ref, options)) for p in plans]
        outs, reports = rb.run_shards(rb.evaluate_task, jobs, desc="eval (ray)", progress=progress)
        seconds = time.perf_counter() - t0
    cm = ConfusionMatrix(outs[0]["confusion"].shape[0])
    cm.matrix = sum_confusions([o["confusion"] for o in outs])
    result = result_from_confusion(cm, sum(len(p.ids) for p in plans), seconds, model=name,
                                   data=str(dataset.root), split=dataset.split, preset=outs[0]["preset"])
    return Distributed(result, tuple(reports), seconds)
