"""Batch sizes and padding shared by compare's passes (models with a fixed or a dynamic batch dimension)."""
from __future__ import annotations

import logging

import numpy as np

from fcnquant.errors import DataError, ModelError

log = logging.getLogger(__name__)


def resolve_batch(requested: int, f_batch: int | None, q_batch: int | None) -> tuple[int, int | None]:
    """Returns (batch size to run, fixed batch dimension or None) for two models' batch dimensions.

    A fixed batch dimension wins over ``requested`` (short batches are then padded, see :func:`pad_batch`).
    """
    if requested < 1:
        raise DataError(f"batch size must be at least 1, got {requested}")
    if f_batch is not None and q_batch is not None and f_batch != q_batch:
        raise ModelError(f"the models have different fixed batch sizes ({f_batch} and {q_batch})")
    fixed = f_batch or q_batch
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
