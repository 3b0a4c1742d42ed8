"""The one image loop: a model's input batches in order, padded to a fixed batch dimension.

Every pass that runs a model over images (collection, evaluation, compare, tune, recovery statistics) reads its
batches here. A model whose batch dimension is fixed at k runs padded batches of k (the last image repeated; the
pass keeps the first n outputs); a dynamic batch dimension runs ``batch_size`` images at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from fcnquant.errors import DataError, ModelError

log = logging.getLogger(__name__)


def resolve_batch(requested: int, *fixed_dims: int | None) -> tuple[int, int | None]:
    """Returns (batch size to run, fixed batch dimension or None) for the batch dimensions of one or more models.

    A fixed batch dimension wins over ``requested`` (short batches are then padded, see :func:`pad_batch`); two
    models with different fixed batch dimensions are an error.
    """
    if requested < 1:
        raise DataError(f"batch size must be at least 1, got {requested}")
    fixed_set = {d for d in fixed_dims if d is not None}
    if len(fixed_set) > 1:
        a, b = sorted(fixed_set)[:2]
        raise ModelError(f"the models have different fixed batch sizes ({a} and {b})")
    fixed = next(iter(fixed_set), None)
    if fixed is not None and fixed != requested:
        log.info("model has a fixed batch of %d; running %s", fixed,
                 "image by image" if fixed == 1 else f"padded batches of {fixed}")
        return fixed, fixed
    return requested, fixed


def pad_batch(images: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """Returns ``images`` padded to ``fixed_batch`` with repeats of the last image (unchanged when not short)."""
    n = images.shape[0]
    if fixed_batch is None or n >= fixed_batch:
        return images
    return np.concatenate([images, np.repeat(images[-1:], fixed_batch - n, axis=0)])


@dataclass
class ModelBatch:
    """One batch: the loader's :class:`~fcnquant.data.Batch` (``ids``, ``images``, ``masks``) and ``feed``, the
    images padded to the model's fixed batch dimension; ``n`` real images."""

    batch: object
    feed: np.ndarray

    @property
    def n(self) -> int:
        return len(self.batch.ids)

    @property
    def ids(self) -> list[str]:
        return self.batch.ids

    @property
    def images(self) -> np.ndarray:
        return self.batch.images

    @property
    def masks(self) -> np.ndarray | None:
        return self.batch.masks


def model_batches(batches: Iterable, fixed_batch: int | None) -> Iterator[ModelBatch]:
    """Yields each loader batch of ``batches`` with its images padded to ``fixed_batch``."""
    for batch in batches:
        yield ModelBatch(batch, pad_batch(batch.images, fixed_batch))


def image_batches(dataset, preset, ids: Sequence[str], batch_size: int, fixed_batch: int | None, *,
                  with_masks: bool | None = None, prefetch: bool = True) -> Iterator[ModelBatch]:
    """Yields the batches of ``ids`` of ``dataset`` under ``preset``, padded to ``fixed_batch`` (see module);
    ``prefetch``: the next batch is read in a background thread while the caller uses this one."""
    from fcnquant.data import iter_batches

    yield from model_batches(iter_batches(dataset, preset, list(ids), batch_size, with_masks=with_masks,
                                          prefetch=prefetch), fixed_batch)
