"""Calibration statistics and evaluation over a Ray cluster, merged exactly (what ``--ray`` runs).

    from fcnquant.distributed import collect, evaluate
    run = collect("fcn8s.onnx", dataset, ids, address="auto", shards=8)   # run.result: CalibrationStats
    run = evaluate("fcn8s.int8.onnx", dataset, ids, address="auto")       # run.result: EvalResult

:func:`compare_passes` runs both passes of ``fcnquant.compare`` (``compare_models(..., ray_address=)`` calls it).

``address``: ``"local"`` (default) starts a local Ray instance for the call; ``"auto"`` or ``"HOST:PORT"`` joins a
running cluster (see :mod:`fcnquant.distributed.cluster`). ``shards`` defaults to the cluster's CPU count. The
results equal a single-process run over the same images: statistics bit for bit, confusion matrix exactly, and
compare's drift bit for bit too (its sums are exact, one image at a time).
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


@dataclass(frozen=True)
class ComparePasses:
    """What compare's two passes gathered over the cluster, merged: the final counters, the gallery's images, the
    drift sums and the filled activation histograms; with the shards' reports (final pass, then drift pass)."""

    final: object  # fcnquant.compare.final.FinalAccumulator
    gallery: object  # fcnquant.compare.gallery.GalleryCollector
    drift: object  # fcnquant.compare.drift_pass.DriftSums
    histograms: dict
    shards: tuple = field(default=())
    seconds: float = 0.0


def compare_passes(
    float_model: str | os.PathLike[str],
    quant_model: str | os.PathLike[str],
    dataset,
    preset,
    ids: Sequence[str],
    drift_on: Sequence[str],
    *,
    pairs,
    isolated: bool = True,
    batch_size: int = 1,
    fixed_batch: int | None = None,
    boundary_radius: int = 3,
    gallery: int = 6,
    histograms: dict | None = None,
    threads: int = 0,
    address: str | None = LOCAL,
    shards: int | None = None,
    progress: bool = True,
) -> ComparePasses:
    """Runs compare's final pass over ``ids`` and its drift pass over ``drift_on`` as shards on a Ray cluster.

    The merged results equal one process's over the same images: the final counters (confusion matrices, changed
    pixels) and the gallery exactly, the drift sums bit for bit (exact sums, one image at a time), the
    histograms (``{tensor: empty FixedHistogram}``, filled in place) exactly. Each model's bytes go through the
    object store once. The drift pass gets ``min(shards, len(drift_on))`` shards.
    """
    import_ray()
    from fcnquant.compare.final import FinalAccumulator
    from fcnquant.compare.gallery import GalleryCollector
    from fcnquant.distributed import ray_backend as rb

    histograms = histograms if histograms is not None else {}
    with ray_session(address) as ray:
        t0 = time.perf_counter()
        count = shards if shards is not None else cluster_cpus(ray)
        models = tuple(rb.put_model(m)[:2] for m in (float_model, quant_model))
        final_opts = dict(preset=preset, batch_size=batch_size, fixed_batch=fixed_batch,
                          boundary_radius=boundary_radius, gallery=gallery, threads=threads)
        plans = plan_shards(ids, count)
        starts = [sum(len(q.ids) for q in plans[:k]) for k in range(len(plans))]
        jobs = [(p, (shard_dataset(dataset, p.ids), models, final_opts, s)) for p, s in zip(plans, starts)]
        finals, reports = rb.run_shards(rb.final_task, jobs, desc="compare: final metrics (ray)", progress=progress)
        drift_opts = dict(preset=preset, pairs=tuple(pairs), isolated=isolated, batch_size=batch_size,
                          threads=threads)
        d_plans = plan_shards(drift_on, count)
        jobs = [(p, (shard_dataset(dataset, p.ids), models, drift_opts, histograms)) for p in d_plans]
        drifts, d_reports = rb.run_shards(rb.drift_task, jobs, desc="compare: drift (ray)", progress=progress)
        seconds = time.perf_counter() - t0
    first = finals[0]["final"]  # results arrive read-only: merged into fresh accumulators
    final = FinalAccumulator(first.num_classes, first.cm_float.ignore_index, first.boundary_radius)
    keep = GalleryCollector(gallery)
    for part in finals:
        final.merge(part["final"])
        keep.merge(part["gallery"])
    drift = drifts[0]["drift"]
    for part in drifts[1:]:
        drift.merge(part["drift"])
    for part in drifts:
        for name, h in part["histograms"].items():
            histograms[name].merge(h)
    return ComparePasses(final, keep, drift, histograms, tuple(reports) + tuple(d_reports), seconds)


def image_confusions(
    model: str | os.PathLike[str] | bytes,
    dataset,
    ids: Sequence[str],
    preset,
    batch_size: int = 1,
    *,
    num_classes: int = 21,
    address: str | None = LOCAL,
    shards: int | None = None,
    threads: int = 0,
    progress: bool = True,
):
    """Returns the (N, C, C) per-image confusion matrices of ``model`` on ``ids`` (in order), in Ray shards:
    exactly ``fcnquant.tune.tuning_set.image_confusions`` of one process."""
    import numpy as np

    import_ray()
    from fcnquant.distributed import ray_backend as rb

    options = dict(preset=preset, batch_size=batch_size, threads=threads, num_classes=num_classes)
    with ray_session(address) as ray:
        plans = _plans(ray, ids, shards)
        sha, ref, _ = rb.put_model(model)
        jobs = [(p, (shard_dataset(dataset, p.ids), sha, ref, options)) for p in plans]
        outs, _ = rb.run_shards(rb.confusions_task, jobs, desc="tune: evaluation (ray)", progress=progress)
    return np.concatenate([np.asarray(o, dtype=np.int64) for o in outs])
