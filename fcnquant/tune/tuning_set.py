"""The tuning set: images decoded once, then one plain inference pass per evaluated model.

Every evaluation of the search runs a model as is (a plain onnxruntime session, no exposed tensors) over the same
images and scores it exactly as ``fcnquant.evaluate`` does (``output_to_classes``, ``ConfusionMatrix``); the float
model's confusion matrix is computed once. Preprocessed images and masks are kept in memory when they fit in
``cache_bytes`` (200 images of 160x160 take 61 MB), else re-read for each evaluation. With ``ray_address`` each
evaluation runs as ``shards`` Ray tasks (``fcnquant.distributed.image_confusions``, the candidate's bytes through the
object store): the same per-image confusion matrices, so the same Score exactly. Every Score keeps its per-image
matrices, for the drop's bootstrap interval (``fcnquant.tune.confidence``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fcnquant.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class Score:
    """One model's scores on the tuning set (percent) and its per-image (N, C, C) confusion matrices."""

    miou: float
    pixel_acc: float
    images: int
    confusions: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, confusions: np.ndarray) -> "Score":
        """Returns the Score of per-image confusion matrices (mIoU and pixel accuracy of their sum)."""
        from fcnquant.metrics import ConfusionMatrix

        cm = ConfusionMatrix(confusions.shape[-1])
        cm.matrix = confusions.sum(0)
        return cls(miou=cm.miou(), pixel_acc=cm.pixel_accuracy() * 100, images=int(confusions.shape[0]),
                   confusions=confusions)


def image_confusions(session, batches, num_classes: int) -> np.ndarray:
    """Returns the (N, C, C) confusion matrix of every image of ``batches`` (loader Batches with masks) under the
    onnxruntime ``session``, scored exactly as ``fcnquant.evaluate`` does; a fixed batch dimension is padded."""
    from fcnquant.evaluate import output_to_classes
    from fcnquant.metrics import ConfusionMatrix
    from fcnquant.runtime import input_spec, run_logits

    _, shape = input_spec(session)
    fixed = shape[0]
    out: list[np.ndarray] = []
    for batch in batches:
        images, n = batch.images, batch.images.shape[0]
        if fixed is not None and n != fixed:
            if n > fixed:
                raise DataError(f"the model takes batches of {fixed}; tune with batch size {fixed}")
            images = np.concatenate([images, np.repeat(images[-1:], fixed - n, axis=0)])
        logits = np.asarray(run_logits(session, images)[0])[:n]
        pred = output_to_classes(logits, batch.masks.shape[1:], num_classes)
        for i in range(n):
            cm = ConfusionMatrix(num_classes)
            cm.update(pred[i:i + 1], batch.masks[i:i + 1])
            out.append(cm.matrix)
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), np.int64)


class TuningSet:
    """Images of one split that every evaluation runs on, with the float model's scores computed once."""

    def __init__(self, dataset, ids: Sequence[str], preset, batch_size: int = 1, *, threads: int = 0,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, ray_address: str | None = None,
                 shards: int | None = None) -> None:
        from fcnquant.data import iter_batches

        if not dataset.has_labels:
            raise DataError(f"tuning needs segmentation masks; dataset {dataset.describe()} has none")
        self.dataset = dataset
        self.ids = [str(i) for i in ids]
        if not self.ids:
            raise DataError("the tuning set is empty")
        dataset.check_ids(self.ids)
        self.preset = preset
        self.batch_size = batch_size
        self.threads = threads
        self.ray_address = ray_address
        self.shards = shards
        self._cache: list | None = None
        first = next(iter_batches(dataset, preset, self.ids[:1], 1))
        per_image = first.images.nbytes + (first.masks.nbytes if first.masks is not None else 0)
        if per_image * len(self.ids) <= cache_bytes:
            self._cache = list(iter_batches(dataset, preset, self.ids, batch_size))
        else:
            log.info("tuning images take %.0f MB: re-read for every evaluation", per_image * len(self.ids) / 1e6)
        self.float_score: Score | None = None

    def batches(self) -> Iterator:
        """Yields the tuning batches (from memory when cached)."""
        from fcnquant.data import iter_batches

        if self._cache is not None:
            yield from self._cache
        else:
            yield from iter_batches(self.dataset, self.preset, self.ids, self.batch_size)

    def score(self, model: str | os.PathLike[str] | bytes) -> Score:
        """Returns the Score of ``model`` (ONNX path or bytes) on the tuning set: one plain inference pass."""
        from fcnquant.data import VOC_CLASSES
        from fcnquant.runtime import make_session

        if self.ray_address is not None:
            from fcnquant.distributed import image_confusions as on_ray

            return Score.of(on_ray(model if isinstance(model, bytes) else Path(model), self.dataset, self.ids,
                                   self.preset, self.batch_size, address=self.ray_address, shards=self.shards,
                                   threads=self.threads, progress=False))
        session = make_session(model if isinstance(model, bytes) else Path(model), threads=self.threads)
        return Score.of(image_confusions(session, self.batches(), len(VOC_CLASSES)))

    def set_float(self, model: str | os.PathLike[str]) -> Score:
        """Scores the float model once and returns its Score (the reference of every drop)."""
        self.float_score = self.score(model)
        return self.float_score

    def drop(self, model: str | os.PathLike[str] | bytes) -> float:
        """Returns mIoU(float) - mIoU(model) in points on the tuning set (one inference pass)."""
        if self.float_score is None:
            raise RuntimeError("set_float must be called first")
        return self.float_score.miou - self.score(model).miou
