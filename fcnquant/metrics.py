"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU (two conventions), pixel accuracy.

``ConfusionMatrix.matrix[t, p]`` counts pixels of true class t predicted as p; pixels labelled ``ignore_index``
are skipped. IoU_c = TP_c / (TP_c + FP_c + FN_c) = M[c,c] / (row_c + col_c - M[c,c]).

- ``miou()``: mmsegmentation's IoUMetric: classes whose union is 0 (never labelled, never predicted) are NaN and
  left out of the mean (nanmean); background included; x100.
- ``miou_awesome()``: awesome-semantic-segmentation-pytorch's score: the mean over all classes, a class with
  union 0 counting as IoU 0; x100.
"""
from __future__ import annotations

import numpy as np

from fcnquant.errors import DataError


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) int64 confusion matrix over batches of predictions and labels."""

    def __init__(self, num_classes: int = 21, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Adds the pixels of ``pred`` (predicted class ids) against ``label`` (true ids, ignore_index skipped)."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise DataError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        label = label.ravel().astype(np.int64)
        pred = pred.ravel().astype(np.int64)
        keep = label != self.ignore_index
        label, pred = label[keep], pred[keep]
        n = self.num_classes
        if label.size and (label.min() < 0 or label.max() >= n):
            raise DataError(
                f"label values must be 0..{n - 1} or {self.ignore_index}; found {label.min()}..{label.max()}")
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise DataError(f"predicted class ids must be 0..{n - 1}; found {pred.min()}..{pred.max()}")
        self.matrix += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)

    def check_labelled(self, images: int, where: str) -> None:
        """Raises DataError when no pixel was labelled (every mask pixel ``ignore_index``): the scores would be NaN,
        measuring nothing. ``images`` and ``where`` (the dataset) name what was read, for the message."""
        if not self.matrix.any():
            raise DataError(f"no labelled pixel in the masks of the {images} image(s) of {where}: every mask pixel "
                            f"is {self.ignore_index} (void), so there is no mIoU to measure; check the annotation "
                            "folder (--ann-dir) and the masks' values")

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Adds ``other``'s counts into this matrix and returns self."""
        if other.num_classes != self.num_classes:
            raise DataError(f"cannot merge confusion matrices of {self.num_classes} and {other.num_classes} classes")
        self.matrix += other.matrix
        return self

    def intersection_union(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns per-class (intersection, union) pixel counts."""
        tp = np.diag(self.matrix)
        return tp, self.matrix.sum(0) + self.matrix.sum(1) - tp

    def iou(self) -> np.ndarray:
        """Returns per-class IoU in 0..1 (float64), NaN where the union is 0."""
        inter, union = self.intersection_union()
        out = np.full(self.num_classes, np.nan)
        np.divide(inter, union, out=out, where=union > 0)
        return out

    def miou(self) -> float:
        """Returns mmseg's mIoU x100: mean over classes with a non-empty union (NaN when there is none)."""
        iou = self.iou()
        return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")

    def miou_awesome(self) -> float:
        """Returns awesome's mIoU x100: mean over all classes, an empty class counting as 0."""
        return float(np.nan_to_num(self.iou(), nan=0.0).mean() * 100)

    def pixel_accuracy(self) -> float:
        """Returns the fraction (0..1) of non-ignored pixels predicted correctly (NaN when there are none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Returns per-class recall TP / (TP + FN) in 0..1, NaN for classes never labelled."""
        rows = self.matrix.sum(1)
        out = np.full(self.num_classes, np.nan)
        np.divide(np.diag(self.matrix), rows, out=out, where=rows > 0)
        return out
