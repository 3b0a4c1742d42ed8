"""Three disjoint image sets: calibration (statistics), tuning (every evaluation of the search), reporting (verdict).

- calibration: ``num_calib`` images of the calibration split (``select_calibration_ids`` with ``seed``, as
  ``fcnquant calibrate`` picks them);
- tuning: ``num_tune`` images of the tuning split, by default the calibration split minus the calibration
  images (a seeded permutation of the rest, listed in dataset order);
- reporting: the reporting split (default ``val``), all of it or its first ``num_report`` images.

The verdict is never measured on an image the search looked at: any overlap between the sets is an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fcnquant.errors import DataError


@dataclass(frozen=True)
class ImageChoice:
    """Where each purpose's images come from and how many (rules in the module docstring); the seed is the data's
    (``DataConfig.seed``). ``report_root``: another VOC root for the reporting images (e.g. a held-out set)."""

    calib_split: str = "train"
    num_calib: int = 50
    tune_split: str | None = None
    num_tune: int = 200
    report_split: str = "val"
    num_report: int | None = None
    report_root: str | os.PathLike[str] | None = None

    def choose(self, root, seed: int = 0) -> "ImageSets":
        """Returns the three ImageSets of the VOC root ``root`` (see :func:`choose_images`)."""
        return choose_images(root, calib_split=self.calib_split, num_calib=self.num_calib,
                             tune_split=self.tune_split, num_tune=self.num_tune, report_split=self.report_split,
                             num_report=self.num_report, seed=seed, report_root=self.report_root)


@dataclass(frozen=True)
class ImageSet:
    """One purpose's images: which split they come from and their ids."""

    purpose: str
    split: str | None
    ids: tuple[str, ...]

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (count and ids)."""
        return {"split": self.split, "count": len(self.ids), "ids": list(self.ids)}


@dataclass(frozen=True)
class ImageSets:
    """The calibration, tuning and reporting images of one tuning run (pairwise disjoint)."""

    calibration: ImageSet
    tuning: ImageSet
    reporting: ImageSet

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict keyed by purpose."""
        return {s.purpose: s.to_dict() for s in (self.calibration, self.tuning, self.reporting)}


def choose_images(root, *, calib_split: str = "train", num_calib: int = 50, tune_split: str | None = None,
                  num_tune: int = 200, report_split: str = "val", num_report: int | None = None,
                  seed: int = 0, report_root=None) -> ImageSets:
    """Returns the three ImageSets drawn from the VOC root ``root`` (rules in the module docstring).

    ``report_root``: another VOC root for the reporting images (a held-out set); ids are then compared as paths.
    """
    from fcnquant.data import open_dataset, select_calibration_ids, take_ids

    if num_calib < 1 or num_tune < 1:
        raise DataError(f"need at least one calibration and one tuning image (got {num_calib} and {num_tune})")
    calib_ds = open_dataset(root, calib_split)
    calib = select_calibration_ids(calib_ds, num_calib, seed=seed)
    taken = set(calib)
    tune_split = calib_split if tune_split is None else tune_split
    tune_ds = calib_ds if tune_split == calib_split else open_dataset(root, tune_split)
    pool = [i for i in tune_ds.ids if i not in taken]
    if not pool:
        raise DataError(f"no {tune_split} images are left for tuning after the {len(calib)} calibration images")
    if num_tune < len(pool):
        perm = np.random.default_rng(seed + 1).permutation(len(pool))[:num_tune]
        pool = [pool[i] for i in sorted(perm.tolist())]
    elif num_tune > len(pool):
        raise DataError(f"asked for {num_tune} tuning images but split {tune_split} has only {len(pool)} that are "
                        f"not calibration images")
    report_ds = open_dataset(root if report_root is None else report_root, report_split)
    report = take_ids(report_ds, None, num_report)
    if report_root is None:
        overlap = (set(report) & set(pool)) | (set(report) & taken)
    else:  # another dataset: the same image file would have to be reachable from both
        used = {calib_ds.image_path(i).resolve() for i in calib} | {tune_ds.image_path(i).resolve() for i in pool}
        overlap = {i for i in report if report_ds.image_path(i).resolve() in used}
    if overlap:
        raise DataError(f"{len(overlap)} reporting image(s) of split {report_split} are also calibration or tuning "
                        f"images (e.g. {sorted(overlap)[0]}); choose disjoint splits")
    return ImageSets(ImageSet("calibration", calib_split, tuple(calib)), ImageSet("tuning", tune_split, tuple(pool)),
                     ImageSet("reporting", report_split, tuple(report)))
