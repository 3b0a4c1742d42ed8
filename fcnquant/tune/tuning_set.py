"""The tuning set: images decoded once, then one plain inference pass per evaluated model.

Every evaluation of the search runs a model as is (a plain onnxruntime session, no exposed tensors) over the same
images and scores it exactly as ``fcnquant.evaluate`` does (``output_to_classes``, ``ConfusionMatrix``); the float
model's confusion matrices are computed once. An evaluation is :func:`confusions_shard` run by the executor over
the tuning images: per-image (n, C, C) confusion matrices, concatenated in shard order, so any number of shards
gives the same Score exactly. Preprocessed images and masks are kept in memory when they fit in ``cache_bytes``
(200 images of 160x160 take 61 MB) and handed to shards that run in this process; shards elsewhere (a Ray
worker) and evaluations of a set too large to keep read the images again. Every Score keeps its per-image
matrices, for the drop's bootstrap interval (``fcnquant.tune.confidence``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from fcnquant.errors import DataError
from fcnquant.execute import Executor, LocalExecutor, RunConfig, ShardContext, image_batches, model_batches

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 << 30
CACHE_KEY = "tuning_batches"


@dataclass(frozen=True)
class Score:
    """One model's scores on the tuning set (percent) and its per-image (N, C, C) confusion matrices; with the
    float model's predictions known, also each image's count of pixels whose predicted class differs from the
    float model's (``changed``) out of ``pixels``."""

    miou: float
    pixel_acc: float
    images: int
    confusions: np.ndarray | None = field(default=None, repr=False, compare=False)
    changed: np.ndarray | None = field(default=None, repr=False, compare=False)
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, confusions: np.ndarray, changed: np.ndarray | None = None,
           pixels: np.ndarray | None = None) -> "Score":
        """Returns the Score of per-image confusion matrices (mIoU and pixel accuracy of their sum)."""
        from fcnquant.metrics import ConfusionMatrix

        cm = ConfusionMatrix(confusions.shape[-1])
        cm.matrix = confusions.sum(0)
        return cls(miou=cm.miou(), pixel_acc=cm.pixel_accuracy() * 100, images=int(confusions.shape[0]),
                   confusions=confusions, changed=changed, pixels=pixels)

    @property
    def disagreement(self) -> float:
        """Returns the percentage of pixels (all images pooled) whose class differs from the float model's."""
        if self.changed is None or self.pixels is None:
            raise RuntimeError("this score was made without the float model's predictions")
        return 100.0 * float(self.changed.sum()) / max(float(self.pixels.sum()), 1.0)


def _within_fixed_batch(batches: Iterable, fixed: int | None) -> Iterator:
    """Yields ``batches``; DataError for a batch larger than the model's fixed batch dimension."""
    for batch in batches:
        if fixed is not None and len(batch.ids) > fixed:
            raise DataError(f"the model takes batches of {fixed}; tune with batch size {fixed}")
        yield batch


def image_confusions(session, batches: Iterable, num_classes: int,
                     advance: Callable[[int], None] | None = None, predictions: list | None = None) -> np.ndarray:
    """Returns the (N, C, C) confusion matrix of every image of ``batches`` (loader Batches with masks) under the
    onnxruntime ``session``, scored exactly as ``fcnquant.evaluate`` does; short batches are padded to a fixed
    batch dimension, longer ones are a DataError. ``advance(n)`` is called after each batch; ``predictions``, a
    list, receives each image's (H, W) uint8 class map."""
    from fcnquant.evaluate import output_to_classes
    from fcnquant.metrics import ConfusionMatrix
    from fcnquant.runtime import input_spec, run_logits

    _, shape = input_spec(session)
    fixed = shape[0]
    out: list[np.ndarray] = []
    for mb in model_batches(_within_fixed_batch(batches, fixed), fixed):
        logits = np.asarray(run_logits(session, mb.feed)[0])[:mb.n]
        pred = output_to_classes(logits, mb.masks.shape[1:], num_classes)
        if predictions is not None:
            predictions.extend(np.asarray(pred[i], np.uint8) for i in range(mb.n))
        for i in range(mb.n):
            cm = ConfusionMatrix(num_classes)
            cm.update(pred[i:i + 1], mb.masks[i:i + 1])
            out.append(cm.matrix)
        if advance is not None:
            advance(mb.n)
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), np.int64)


def cached_slice(cache: Sequence, start: int, ids: Sequence[str]) -> list | None:
    """Returns the batches of ``cache`` (batches of the whole id list, in order) that hold exactly ``ids``, the
    images from position ``start`` on; None when a batch straddles the slice's ends."""
    picked, position = [], 0
    for batch in cache:
        n = len(batch.ids)
        if position >= start and position + n <= start + len(ids):
            picked.append(batch)
        elif position < start + len(ids) and position + n > start:
            return None
        position += n
    return picked if [i for b in picked for i in b.ids] == list(ids) else None


def confusions_shard(ctx: ShardContext, preset, batch_size: int, num_classes: int,
                     cached: bool, agreement: str | None = None):
    """Returns the per-image (n, C, C) confusion matrices of the model ``"model"`` on the shard's images (a shard
    function); with ``cached``, the decoded batches come from the shared value ``"tuning_batches"``.

    ``agreement="keep"``: returns (confusions, the images' class maps); ``"compare"``: (confusions, per-image
    counts of pixels whose class differs from the shared value ``"float_predictions"`` (every image's float class
    map, in id order), per-image pixel counts)."""
    session = ctx.session("model")
    batches = cached_slice(ctx.value(CACHE_KEY), ctx.start, ctx.ids) if cached else None
    if batches is None:
        batches = (mb.batch for mb in image_batches(ctx.dataset, preset, ctx.ids, batch_size, None))
    if agreement is None:
        return image_confusions(session, batches, num_classes, ctx.advance)
    preds: list[np.ndarray] = []
    confusions = image_confusions(session, batches, num_classes, ctx.advance, predictions=preds)
    if agreement == "keep":
        return confusions, preds
    reference = ctx.value(FLOAT_PREDICTIONS_KEY)[ctx.start:ctx.start + len(ctx.ids)]
    changed = np.array([int((p != r).sum()) for p, r in zip(preds, reference)], np.int64)
    return confusions, changed, np.array([p.size for p in preds], np.int64)


FLOAT_PREDICTIONS_KEY = "float_predictions"


class TuningSet:
    """Images of one split that every evaluation runs on, with the float model's scores computed once.

    ``run``: the executor every evaluation runs on and the batch size (:class:`~fcnquant.execute.RunConfig`).
    """

    def __init__(self, dataset, ids: Sequence[str], preset, run: RunConfig | Executor | None = None, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        from fcnquant.data import iter_batches

        if not dataset.has_labels:
            raise DataError(f"tuning needs segmentation masks; dataset {dataset.describe()} has none")
        self.dataset = dataset
        self.ids = [str(i) for i in ids]
        if not self.ids:
            raise DataError("the tuning set is empty")
        dataset.check_ids(self.ids)
        run = RunConfig.of(run)
        self.executor = run.resolved()
        self.preset = preset
        self.batch_size = run.batch_size
        self._cache: list | None = None
        first = next(iter_batches(dataset, preset, self.ids[:1], 1))
        per_image = first.images.nbytes + (first.masks.nbytes if first.masks is not None else 0)
        if per_image * len(self.ids) <= cache_bytes:
            self._cache = list(iter_batches(dataset, preset, self.ids, self.batch_size))
        else:
            log.info("tuning images take %.0f MB: re-read for every evaluation", per_image * len(self.ids) / 1e6)
        self.float_score: Score | None = None
        self.float_predictions: list[np.ndarray] | None = None  # the float model's class maps, for agreement

    def batches(self) -> Iterator:
        """Yields the tuning batches (from memory when cached)."""
        from fcnquant.data import iter_batches

        if self._cache is not None:
            yield from self._cache
        else:
            yield from iter_batches(self.dataset, self.preset, self.ids, self.batch_size)

    def score(self, model: str | os.PathLike[str] | bytes) -> Score:
        """Returns the Score of ``model`` (ONNX path or bytes) on the tuning set: one plain inference pass."""
        return self._score(model, "compare" if self.float_predictions is not None else None)

    def _score(self, model, agreement: str | None) -> Score:
        from fcnquant.data import VOC_CLASSES

        # the decoded images help only shards that run in this process
        cached = self._cache is not None and isinstance(self.executor, LocalExecutor)
        shared = {CACHE_KEY: self._cache} if cached else {}
        if agreement == "compare":
            shared[FLOAT_PREDICTIONS_KEY] = self.float_predictions
        parts = self.executor.map(
            confusions_shard, self.dataset, self.ids,
            args=(self.preset, self.batch_size, len(VOC_CLASSES), cached, agreement),
            models={"model": model if isinstance(model, bytes) else Path(model)},
            shared=shared or None, desc="tune: evaluation")
        if agreement is None:
            return Score.of(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
        confusions = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
        if agreement == "keep":
            self.float_predictions = [m for p in parts for m in p[1]]
            sizes = np.array([m.size for m in self.float_predictions], np.int64)
            return Score.of(confusions, np.zeros(len(sizes), np.int64), sizes)
        return Score.of(confusions, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))

    def set_float(self, model: str | os.PathLike[str], *, agreement: bool = False) -> Score:
        """Scores the float model once and returns its Score (the reference of every drop); with ``agreement``,
        keeps its class maps so that every later Score also counts the pixels that changed class."""
        self.float_score = self._score(model, "keep" if agreement else None)
        return self.float_score

    def drop(self, model: str | os.PathLike[str] | bytes) -> float:
        """Returns mIoU(float) - mIoU(model) in points on the tuning set (one inference pass)."""
        if self.float_score is None:
            raise RuntimeError("set_float must be called first")
        return self.float_score.miou - self.score(model).miou
