"""How sure a tuning-set drop is: a paired bootstrap over the tuning images (numpy).

mIoU is not a mean over images (it is computed from the summed confusion matrix), so its sampling error is found
by resampling images: each of ``resamples`` draws picks N of the N tuning images with replacement, sums the same
images' confusion matrices for the float model and the candidate (paired: the same draw for both), and takes the
difference of their mIoUs. The interval is the percentile interval of those differences; the upper bound is what
``tune(..., confidence=P)`` holds against the budget. 200 tuning images give intervals of about +-0.15 mIoU points
on the demo models, so a 0.05 budget on 200 images is a point estimate, not a guarantee. Draws come from a fixed
seed, so the interval is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class DropInterval:
    """The bootstrap interval of a drop (points): ``lo``/``hi`` at ``level`` (two-sided), and the draws' count."""

    drop: float
    lo: float
    hi: float
    level: float
    resamples: int

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"drop": round(self.drop, 4), "lo": round(self.lo, 4), "hi": round(self.hi, 4), "level": self.level,
                "resamples": self.resamples}


def miou_of(confusions: np.ndarray) -> np.ndarray:
    """Returns mmseg's mIoU x100 of each (C, C) confusion matrix in ``confusions`` (..., C, C): the mean IoU over
    classes with a non-empty union (NaN when none has one), as ``fcnquant.metrics.ConfusionMatrix.miou``."""
    cm = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    valid = union > 0
    count = valid.sum(-1)
    total = np.where(valid, iou, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1) * 100, np.nan)


def resample_weights(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Returns (resamples, n) int64 counts: how often each image is drawn in each bootstrap sample of n."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.int64)


def bootstrap_drop(float_confusions: np.ndarray, quant_confusions: np.ndarray, *,
                   resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0) -> DropInterval:
    """Returns the paired bootstrap DropInterval of mIoU(float) - mIoU(quant) from per-image (N, C, C) matrices."""
    f = np.asarray(float_confusions, dtype=np.int64)
    q = np.asarray(quant_confusions, dtype=np.int64)
    if f.shape != q.shape or f.ndim != 3 or f.shape[0] < 1:
        raise ValueError(f"expected two (N, C, C) arrays of one shape, got {f.shape} and {q.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, c, _ = f.shape
    w = resample_weights(n, resamples, seed)
    drops = miou_of((w @ f.reshape(n, -1)).reshape(-1, c, c)) - miou_of((w @ q.reshape(n, -1)).reshape(-1, c, c))
    drops = drops[np.isfinite(drops)]
    point = float(miou_of(f.sum(0)) - miou_of(q.sum(0)))
    if drops.size == 0:
        return DropInterval(point, float("nan"), float("nan"), level, resamples)
    lo, hi = np.quantile(drops, [(1 - level) / 2, (1 + level) / 2])
    return DropInterval(point, float(lo), float(hi), level, resamples)


def upper_bound(float_confusions: np.ndarray, quant_confusions: np.ndarray, confidence: float, *,
                resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Returns the one-sided ``confidence`` upper bound of the drop (the ``confidence`` quantile of the draws)."""
    return bootstrap_drop(float_confusions, quant_confusions, resamples=resamples, level=2 * confidence - 1,
                          seed=seed).hi
