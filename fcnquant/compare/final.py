"""Final-output agreement of two segmentation models: per-model confusion matrices and changed-pixel shares (numpy).

*Changed pixels*: pixels whose predicted class differs between the float and the quantized model, over all pixels
(labelled or not). *Boundary band*: the pixels within ``radius`` pixels (Chebyshev distance, a (2r+1)x(2r+1)
window) of a change of label, i.e. where the window's maximum and minimum label differ. The labels are the
ground-truth masks when the data has them (the void value 255 counts as a label, so VOC's void outlines are part of
the band) and the float model's prediction otherwise. The counters are integers, so memory is constant.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from fcnquant.metrics import ConfusionMatrix

DEFAULT_BOUNDARY_RADIUS = 3


def boundary_band(labels: np.ndarray, radius: int = DEFAULT_BOUNDARY_RADIUS) -> np.ndarray:
    """Returns a bool mask shaped like ``labels`` ((H, W) or (N, H, W)): pixels within ``radius`` of a label change."""
    labels = np.asarray(labels)
    if radius < 0:
        raise ValueError(f"boundary radius must be >= 0, got {radius}")
    size = [1] * (labels.ndim - 2) + [2 * radius + 1, 2 * radius + 1]
    if radius == 0:
        return np.zeros(labels.shape, dtype=bool)
    hi = ndimage.maximum_filter(labels, size=size, mode="nearest")
    lo = ndimage.minimum_filter(labels, size=size, mode="nearest")
    return hi != lo


class FinalAccumulator:
    """Accumulates both models' confusion matrices (when labelled) and the changed-pixel counts over batches."""

    def __init__(self, num_classes: int, ignore_index: int = 255, boundary_radius: int = DEFAULT_BOUNDARY_RADIUS):
        self.num_classes = int(num_classes)
        self.boundary_radius = int(boundary_radius)
        self.cm_float = ConfusionMatrix(num_classes, ignore_index)
        self.cm_quant = ConfusionMatrix(num_classes, ignore_index)
        self.labelled = False
        self.pixels = 0
        self.changed = 0
        self.boundary_pixels = 0
        self.boundary_changed = 0

    def update(self, pred_float: np.ndarray, pred_quant: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Adds one batch of (N, H, W) predicted class ids of both models and, optionally, their (N, H, W) labels."""
        pred_float = np.asarray(pred_float)
        pred_quant = np.asarray(pred_quant)
        if pred_float.shape != pred_quant.shape:
            raise ValueError(f"prediction shapes differ: {pred_float.shape} vs {pred_quant.shape}")
        if labels is not None:
            self.labelled = True
            self.cm_float.update(pred_float, labels)
            self.cm_quant.update(pred_quant, labels)
        changed = pred_float != pred_quant
        band = boundary_band(labels if labels is not None else pred_float, self.boundary_radius)
        self.pixels += changed.size
        self.changed += int(np.count_nonzero(changed))
        self.boundary_pixels += int(np.count_nonzero(band))
        self.boundary_changed += int(np.count_nonzero(changed & band))

    def merge(self, other: "FinalAccumulator") -> "FinalAccumulator":
        """Adds ``other``'s counters (other images, same classes and radius) into this one and returns self."""
        if (other.num_classes, other.boundary_radius) != (self.num_classes, self.boundary_radius):
            raise ValueError(f"cannot merge final metrics of {other.num_classes} classes / radius "
                             f"{other.boundary_radius} into {self.num_classes} / {self.boundary_radius}")
        self.cm_float.merge(other.cm_float)
        self.cm_quant.merge(other.cm_quant)
        self.labelled = self.labelled or other.labelled
        self.pixels += other.pixels
        self.changed += other.changed
        self.boundary_pixels += other.boundary_pixels
        self.boundary_changed += other.boundary_changed
        return self

    @property
    def changed_share(self) -> float:
        """Returns the fraction of all pixels whose predicted class changed (NaN before any update)."""
        return self.changed / self.pixels if self.pixels else math.nan

    @property
    def boundary_changed_share(self) -> float:
        """Returns the fraction of boundary-band pixels whose predicted class changed (NaN for an empty band)."""
        return self.boundary_changed / self.boundary_pixels if self.boundary_pixels else math.nan
