"""Calibration as a Python API: choose images, collect statistics, compute a table, in one call or step by step.

Steps for pipelines::

    stats = collect("fcn8s.onnx", data="VOCdevkit", num_images=500)      # one inference pass per image
    stats.save("stats.npz")                                              # raw histograms, no pickle
    table = compute_table(stats, "kl", target="ort-cpu")                 # any method, no inference
    table.save("calib.json")

or ``table = calibrate("fcn8s.onnx", method="kl")`` for all of it. Sharded collection:
``collect(..., shard="2/4")`` on each machine, then ``merge_stats([...])`` (exact).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fcnquant._io import file_sha256
from fcnquant.calibrate.collect import DEFAULT_OPTIMIZATION, Shard, collect_stats
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable, build_table
from fcnquant.errors import CalibrationError, DataError, ModelError

log = logging.getLogger(__name__)


def open_calibration_data(data: str | os.PathLike[str] | None, split: str | None = "train", *, progress: bool = True,
                          model=None, ann_dir: str | None = None):
    """Returns the Dataset to calibrate on: ``data`` (VOC root or image folder), or the default data for ``model``.

    Without ``data``: the built-in synthetic VOC for a shipped demo model, else a VOC found by
    ``fcnquant.data.resolve_data`` ($FCNQUANT_DATA, ./data/VOCdevkit, ./VOCdevkit), else the synthetic set with a
    warning. ``ann_dir`` picks the annotation folder (see ``fcnquant.data.open_dataset``).
    """
    from fcnquant.data import open_dataset, resolve_data

    return open_dataset(resolve_data(data, model, progress=progress).root, split, ann_dir)


def choose_ids(
    dataset,
    num_images: int | None = 500,
    seed: int = 0,
    balanced: bool = False,
    ids: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> list[str]:
    """Returns the calibration ids: ``ids`` when given (checked against the dataset), else a seeded selection."""
    from fcnquant.data import select_calibration_ids

    if ids is None:
        return select_calibration_ids(dataset, num_images, seed=seed, balanced=balanced, progress=progress)
    ids = [str(i) for i in ids]
    known = set(dataset.ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise DataError(f"{len(missing)} id(s) are not in dataset {dataset.describe()}: {', '.join(missing[:5])}")
    return ids


def collect(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str | None = "train",
    num_images: int | None = 500,
    seed: int = 0,
    balanced: bool = False,
    preset=None,
    batch_size: int = 1,
    ids: Sequence[str] | None = None,
    shard: str | Shard | tuple[int, int] | None = None,
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    skip_nonfinite: bool = False,
    progress: bool = True,
    optimization: str = DEFAULT_OPTIMIZATION,
    ann_dir: str | None = None,
) -> CalibrationStats:
    """Returns the activation statistics of ``model`` over the chosen calibration images.

    Images: ``ids`` if given, else ``num_images`` chosen from ``data``/``split`` with ``seed`` (``balanced``:
    cover every class first). ``shard`` ("i/n") keeps slice i of n of that list. Without ``data``, see
    :func:`open_calibration_data`. See :func:`collect_stats`.
    """
    dataset = open_calibration_data(data, split, progress=progress, model=model, ann_dir=ann_dir)
    chosen = choose_ids(dataset, num_images, seed, balanced, ids, progress=progress)
    return collect_stats(model, dataset, chosen, preset, batch_size, size=size, mean=mean, std=std,
                         skip_nonfinite=skip_nonfinite,
                         shard=shard, progress=progress, optimization=optimization)


def compute_table(
    stats: CalibrationStats, method: str = "kl", target: str = "ort-cpu", **params: Any
) -> CalibrationTable:
    """Returns the calibration table of ``stats`` by ``method`` (with method ``params``) for ``target``."""
    return build_table(stats, method, target, **params)


def load_stats(path: str | os.PathLike[str], model: str | os.PathLike[str] | None = None) -> CalibrationStats:
    """Returns the statistics saved at ``path``; with ``model``, checks they were collected on that model file."""
    stats = CalibrationStats.load(path)
    if model is not None:
        sha = file_sha256(model) if Path(model).is_file() else None
        if sha is None:
            raise ModelError(f"model file not found: {model}")
        if sha != stats.model_sha256:
            raise CalibrationError(
                f"{path} was collected on a different model (sha256 {stats.model_sha256[:12]}) than {model} "
                f"(sha256 {sha[:12]})")
    if stats.shard is not None:
        log.warning("%s holds shard %s only; merge all shards with `fcnquant merge-stats` first", path, stats.shard)
    return stats


def calibrate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str | None = "train",
    method: str = "kl",
    num_images: int | None = 500,
    seed: int = 0,
    balanced: bool = False,
    preset=None,
    target: str = "ort-cpu",
    batch_size: int = 1,
    params: Mapping[str, Any] | None = None,
    ids: Sequence[str] | None = None,
    shard: str | Shard | tuple[int, int] | None = None,
    progress: bool = True,
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    skip_nonfinite: bool = False,
    return_stats: bool = False,
    ann_dir: str | None = None,
) -> CalibrationTable | tuple[CalibrationTable, CalibrationStats]:
    """Returns the calibration table of ``model`` (and the statistics with ``return_stats``).

    Collects statistics over the calibration images (see :func:`collect`), then applies ``method`` with
    ``params`` (e.g. ``{"percentile": 99.9}``) for ``target`` (``ort-cpu``, ``tensorrt``, ``npu-pow2``).
    To also emit the int8 model (and run recovery passes) in one call, use :func:`fcnquant.flow.calibrate`.
    """
    # Fail on a bad method, parameter or target before spending minutes on inference.
    from fcnquant.calibrate.methods import resolve_params
    from fcnquant.calibrate.qparams import get_target

    resolve_params(method, **dict(params or {}))
    get_target(target)
    stats = collect(model, data, split, num_images, seed, balanced, preset, batch_size, ids, shard, size=size,
                    mean=mean, std=std, skip_nonfinite=skip_nonfinite, progress=progress, ann_dir=ann_dir)
    table = compute_table(stats, method, target, **dict(params or {}))
    return (table, stats) if return_stats else table
