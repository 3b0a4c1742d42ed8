"""Deterministic choice of calibration images, optionally class-balanced, and id lists saved as text."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnquant._io import atomic_write_text
from fcnquant.data.palette import NUM_CLASSES
from fcnquant.data.voc import Dataset
from fcnquant.errors import DataError

log = logging.getLogger(__name__)


def class_presence(dataset: Dataset, ids: list[str] | None = None, progress: bool = False) -> list[int]:
    """Returns, per id, a bitmask of the classes present in its mask (bit c set when class c occurs)."""
    from tqdm import tqdm

    if not dataset.has_labels:
        raise DataError(f"class-balanced selection needs masks; dataset {dataset.describe()} has none")
    out = []
    for image_id in tqdm(dataset.ids if ids is None else ids, desc="reading masks", unit="mask",
                         disable=not progress):
        present = np.flatnonzero(np.bincount(dataset.load_mask(image_id).ravel(), minlength=256)[:NUM_CLASSES])
        out.append(sum(1 << int(c) for c in present))
    return out


def select_calibration_ids(
    dataset: Dataset,
    num_images: int | None,
    seed: int = 0,
    balanced: bool = False,
    *,
    progress: bool = False,
) -> list[str]:
    """Returns ``num_images`` ids of ``dataset``, a deterministic function of (dataset ids, num_images, seed).

    Plain selection: the first ``num_images`` of a seeded random permutation, so a smaller selection is a subset of
    a larger one with the same seed. Balanced: greedy cover first (repeatedly the image, in permutation order,
    adding the most classes not yet covered) until every class present in the split is covered or the budget is
    spent, then filled from the permutation. The result is listed in dataset order. ``num_images=None`` or more
    than available: every id.
    """
    ids = list(dataset.ids)
    if num_images is None or num_images >= len(ids):
        if num_images is not None and num_images > len(ids):
            log.warning("asked for %d images but %s has %d; using all", num_images, dataset.describe(), len(ids))
        return ids
    if num_images < 1:
        raise DataError(f"number of calibration images must be at least 1, got {num_images}")
    perm = np.random.default_rng(seed).permutation(len(ids)).tolist()
    if not balanced:
        chosen = perm[:num_images]
    else:
        masks = class_presence(dataset, progress=progress)
        chosen = _greedy_cover(perm, masks, num_images)
        taken = set(chosen)
        chosen += [i for i in perm if i not in taken][: num_images - len(chosen)]
        covered = 0
        for i in chosen:
            covered |= masks[i]
        everything = 0
        for m in masks:
            everything |= m
        if covered != everything:
            log.warning("%d images cover %d of the %d classes present in the split", num_images,
                        bin(covered).count("1"), bin(everything).count("1"))
    return [ids[i] for i in sorted(chosen)]


def _greedy_cover(order: list[int], masks: list[int], budget: int) -> list[int]:
    chosen: list[int] = []
    uncovered = 0
    for m in masks:
        uncovered |= m
    while uncovered and len(chosen) < budget:
        best, best_gain = -1, 0
        for i in order:  # ties go to the earliest in the seeded order
            gain = bin(masks[i] & uncovered).count("1")
            if gain > best_gain:
                best, best_gain = i, gain
        if best < 0:
            break
        chosen.append(best)
        uncovered &= ~masks[best]
    return chosen


def check_seed(seed) -> None:
    """Raises DataError unless ``seed`` is an integer numpy's generators accept (0 or more)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"the seed must be an integer >= 0, got {seed!r}")


def save_ids(path: str | os.PathLike[str], ids: list[str]) -> None:
    """Writes ``ids`` to ``path`` atomically, one per line."""
    atomic_write_text(path, "".join(f"{i}\n" for i in ids))


def load_ids(path: str | os.PathLike[str]) -> list[str]:
    """Returns the ids listed in a text file (one per line; blank lines and lines starting with # skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is not part of an id
    except FileNotFoundError as exc:
        raise DataError(f"id list not found: {p}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"id list {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read id list {p}: {exc}") from exc
    ids = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise DataError(f"id list {p} is empty")
    return ids


def take_ids(dataset: Dataset, ids: Sequence[str] | None = None, num_images: int | None = None) -> list[str]:
    """Returns the ids to run on, in order: ``ids`` (checked against the dataset) or all of the dataset's ids,
    cut to the first ``num_images`` when given (DataError for ``num_images < 1``)."""
    chosen = [str(i) for i in ids] if ids is not None else list(dataset.ids)
    if ids is not None:
        dataset.check_ids(chosen)
    if num_images is not None:
        if num_images < 1:
            raise DataError(f"number of images must be at least 1, got {num_images}")
        chosen = chosen[:num_images]
    return chosen
