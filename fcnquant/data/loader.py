"""Turning dataset ids into preprocessed NCHW float32 batches (with masks when the dataset has labels)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from fcnquant.data.presets import Preset
from fcnquant.data.voc import Dataset
from fcnquant.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Preprocessed images (N, 3, H, W) float32 and, for labelled data, masks (N, H', W') uint8 (255 = ignore).

    Masks have the images' H, W except for presets with ``score_original`` (then N is 1 and the mask keeps the
    image's original size).
    """

    ids: list[str]
    images: np.ndarray
    masks: np.ndarray | None


def _load_batch(dataset: Dataset, preset: Preset, ids: list[str], with_masks: bool) -> Batch:
    images, masks = [], []
    for image_id in ids:
        if with_masks:
            image, mask = dataset.load_pair(image_id)
        else:
            image, mask = dataset.load_image(image_id), None
        x, m = preset.transform(image, mask)
        images.append(x)
        masks.append(m)
    return Batch(ids=list(ids), images=np.stack(images), masks=np.stack(masks) if with_masks else None)


def iter_batches(
    dataset: Dataset,
    preset: Preset,
    ids: Sequence[str] | None = None,
    batch_size: int = 1,
    *,
    with_masks: bool | None = None,
    prefetch: bool = True,
) -> Iterator[Batch]:
    """Yields ``Batch``es of ``ids`` (default: all of the dataset's) in order, ``batch_size`` images at a time.

    ``with_masks`` defaults to ``dataset.has_labels``. Variable-size presets (keep-ratio) force batch size 1.
    With ``prefetch`` the next batch is decoded in a background thread while the caller uses the current one.
    """
    ids = list(dataset.ids if ids is None else ids)
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if with_masks is None:
        with_masks = dataset.has_labels
    elif with_masks and not dataset.has_labels:
        raise DataError(f"dataset {dataset.describe()} has no segmentation masks")
    if preset.variable_size and batch_size > 1:
        log.info("preset %s makes images of varying size; using batch size 1", preset.name)
        batch_size = 1
    chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    if not chunks:
        return
    if not prefetch:
        for chunk in chunks:
            yield _load_batch(dataset, preset, chunk, with_masks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnquant-load") as pool:
        future = pool.submit(_load_batch, dataset, preset, chunks[0], with_masks)
        for k in range(len(chunks)):
            batch = future.result()
            if k + 1 < len(chunks):
                future = pool.submit(_load_batch, dataset, preset, chunks[k + 1], with_masks)
            yield batch
