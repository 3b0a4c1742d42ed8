"""The final-metrics pass: both models as they are, over every image: mIoU, per-class IoU and changed pixels.

Each batch is decoded once and run through both models' plain onnxruntime sessions (no exposed tensors, so
onnxruntime keeps every fusion and the quantized model its integer kernels): the predictions are bit for bit what
``fcnquant.evaluate`` computes, at the cost of two evaluations. A shard (:func:`final_shard`) keeps integer
counters only (:class:`FinalAccumulator`: both confusion matrices and the changed-pixel counts) and the images with
the most changed pixels for the gallery (:class:`~fcnquant.compare.gallery.GalleryCollector`), so memory is
constant in the number of images and shards merge exactly (:func:`merge_final`).

*Changed pixels*: pixels whose predicted class differs between the float and the quantized model, over all pixels
(labelled or not). *Boundary band*: the pixels within ``radius`` pixels (Chebyshev distance, a (2r+1)x(2r+1)
window) of a change of label, i.e. where the window's maximum and minimum label differ. The labels are the
ground-truth masks when the data has them (the void value 255 counts as a label, so VOC's void outlines are part of
the band) and the float model's prediction otherwise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from fcnquant.compare._json import nan_if_none, num
from fcnquant.compare.gallery import GalleryCollector
from fcnquant.data import DataConfig, Preset
from fcnquant.errors import ModelError
from fcnquant.execute import LocalExecutor, ShardContext, image_batches, resolve_batch
from fcnquant.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

DEFAULT_BOUNDARY_RADIUS = 3

#: ``on_batch(batch, pred_float, pred_quant)``: the loader's Batch and both models' (N, H, W) class ids
BatchHook = Callable[[object, np.ndarray, np.ndarray], None]


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



@dataclass(frozen=True)
class FinalMetrics:
    """Scores of both models' final predictions; IoU and mIoU in percent, NaN when the data has no labels."""

    class_names: tuple[str, ...]
    labelled: bool
    miou_float: float
    miou_quant: float
    miou_awesome_float: float
    miou_awesome_quant: float
    iou_float: tuple[float, ...]
    iou_quant: tuple[float, ...]
    pixel_acc_float: float
    pixel_acc_quant: float
    pixels: int
    changed: int
    boundary_pixels: int
    boundary_changed: int
    boundary_radius: int

    @property
    def miou_drop(self) -> float:
        """Returns mIoU(float) - mIoU(quantized) in points (positive = the quantized model is worse)."""
        return self.miou_float - self.miou_quant

    @property
    def miou_change(self) -> float:
        """Returns mIoU(quantized) - mIoU(float) in points (negative = the quantized model is worse): the sign
        every report prints."""
        return self.miou_quant - self.miou_float

    @property
    def iou_delta(self) -> tuple[float, ...]:
        """Returns per-class IoU(quantized) - IoU(float) in points (NaN where a class has no pixels)."""
        return tuple(q - f for f, q in zip(self.iou_float, self.iou_quant))

    @property
    def changed_share(self) -> float:
        """Returns the fraction of pixels whose predicted class changed."""
        return self.changed / self.pixels if self.pixels else math.nan

    @property
    def boundary_changed_share(self) -> float:
        """Returns the fraction of boundary-band pixels whose predicted class changed."""
        return self.boundary_changed / self.boundary_pixels if self.boundary_pixels else math.nan

    @property
    def interior_changed_share(self) -> float:
        """Returns the fraction of pixels outside the boundary band whose predicted class changed."""
        n = self.pixels - self.boundary_pixels
        return (self.changed - self.boundary_changed) / n if n else math.nan

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (NaN as null), with the derived deltas and shares."""
        return {
            "labelled": self.labelled,
            "miou_float": num(self.miou_float), "miou_quant": num(self.miou_quant), "miou_drop": num(self.miou_drop),
            "miou_change": num(self.miou_change),
            "miou_awesome_float": num(self.miou_awesome_float), "miou_awesome_quant": num(self.miou_awesome_quant),
            "pixel_acc_float": num(self.pixel_acc_float), "pixel_acc_quant": num(self.pixel_acc_quant),
            "per_class": [
                {"class": c, "iou_float": num(f), "iou_quant": num(q), "delta": num(q - f)}
                for c, f, q in zip(self.class_names, self.iou_float, self.iou_quant)
            ],
            "pixels": self.pixels, "changed": self.changed, "changed_share": num(self.changed_share),
            "boundary_radius": self.boundary_radius, "boundary_pixels": self.boundary_pixels,
            "boundary_changed": self.boundary_changed, "boundary_changed_share": num(self.boundary_changed_share),
            "interior_changed_share": num(self.interior_changed_share),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FinalMetrics":
        """Returns the FinalMetrics stored by ``to_dict``."""
        per, f = d["per_class"], nan_if_none
        return cls(
            class_names=tuple(c["class"] for c in per), labelled=bool(d["labelled"]),
            miou_float=f(d["miou_float"]), miou_quant=f(d["miou_quant"]),
            miou_awesome_float=f(d["miou_awesome_float"]), miou_awesome_quant=f(d["miou_awesome_quant"]),
            iou_float=tuple(f(c["iou_float"]) for c in per), iou_quant=tuple(f(c["iou_quant"]) for c in per),
            pixel_acc_float=f(d["pixel_acc_float"]), pixel_acc_quant=f(d["pixel_acc_quant"]),
            pixels=int(d["pixels"]), changed=int(d["changed"]), boundary_pixels=int(d["boundary_pixels"]),
            boundary_changed=int(d["boundary_changed"]), boundary_radius=int(d["boundary_radius"]),
        )


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

    def metrics(self) -> FinalMetrics:
        """Returns the FinalMetrics of these counts (class names are VOC's when there are 21 classes)."""
        from fcnquant.data import VOC_CLASSES

        n = self.num_classes
        names = tuple(VOC_CLASSES) if n == len(VOC_CLASSES) else tuple(f"class {k}" for k in range(n))
        nan = math.nan
        if self.labelled:
            cf, cq = self.cm_float, self.cm_quant
            iou_f, iou_q = tuple(float(v) for v in cf.iou() * 100), tuple(float(v) for v in cq.iou() * 100)
            scores = (cf.miou(), cq.miou(), cf.miou_awesome(), cq.miou_awesome(), cf.pixel_accuracy() * 100,
                      cq.pixel_accuracy() * 100)
        else:
            iou_f = iou_q = tuple(nan for _ in range(n))
            scores = (nan,) * 6
        return FinalMetrics(
            class_names=names, labelled=self.labelled, miou_float=scores[0], miou_quant=scores[1],
            miou_awesome_float=scores[2], miou_awesome_quant=scores[3], iou_float=iou_f, iou_quant=iou_q,
            pixel_acc_float=scores[4], pixel_acc_quant=scores[5], pixels=self.pixels, changed=self.changed,
            boundary_pixels=self.boundary_pixels, boundary_changed=self.boundary_changed,
            boundary_radius=self.boundary_radius,
        )

    @property
    def changed_share(self) -> float:
        """Returns the fraction of all pixels whose predicted class changed (NaN before any update)."""
        return self.changed / self.pixels if self.pixels else math.nan

    @property
    def boundary_changed_share(self) -> float:
        """Returns the fraction of boundary-band pixels whose predicted class changed (NaN for an empty band)."""
        return self.boundary_changed / self.boundary_pixels if self.boundary_pixels else math.nan


@dataclass
class FinalShard:
    """One shard's result of the final pass: its counters, its most changed images, and the preset it ran."""

    counts: FinalAccumulator
    gallery: GalleryCollector
    preset: Preset


class FinalScorer:
    """The final pass's state in one shard: both models' plain sessions, the preset and batching they resolve, the
    counters and the gallery's images; :meth:`score` adds one batch's logits, from :meth:`logits` or from sessions
    that compute the same bits (:mod:`fcnquant.compare.joint`).

    ``preset``: a Preset, or a DataConfig whose preset is resolved for the float model. A fixed batch dimension of
    the models wins over ``batch_size`` (``self.batch_size``, ``self.fixed_batch``). ``gallery``: how many of the most
    changed images to keep. ``names``: the models as error messages name them.
    """

    def __init__(self, ctx: ShardContext, preset: Preset | DataConfig, batch_size: int, boundary_radius: int,
                 gallery: int, names: tuple[str, str] = ("the float model", "the quantized model")) -> None:
        from fcnquant.runtime import input_spec

        # the two sessions take turns on every image: threads that spin-wait after a run would take the cores the
        # other one needs (the final pass ran ~10 % slower than the two evaluations with spinning on)
        self.f_sess, self.q_sess = ctx.session("float", spinning=False), ctx.session("quant", spinning=False)
        _, f_shape = input_spec(self.f_sess)
        _, q_shape = input_spec(self.q_sess)
        if f_shape[1:] != q_shape[1:]:
            raise ModelError(f"input shapes differ: {names[0]} takes {f_shape}, {names[1]} takes {q_shape}")
        self.preset = preset.preset_for(self.f_sess) if isinstance(preset, DataConfig) else preset
        self.batch_size, self.fixed_batch = resolve_batch(batch_size, f_shape[0], q_shape[0])
        self.boundary_radius = boundary_radius
        self.keep = GalleryCollector(gallery, start=ctx.start)
        self.acc: FinalAccumulator | None = None

    def logits(self, mb) -> tuple[np.ndarray, np.ndarray]:
        """Returns both plain sessions' logits of a ModelBatch's ``mb.n`` images."""
        from fcnquant.runtime import run_logits

        return (np.asarray(run_logits(self.f_sess, mb.feed)[0])[:mb.n],
                np.asarray(run_logits(self.q_sess, mb.feed)[0])[:mb.n])

    def score(self, mb, f_logits: np.ndarray, q_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Adds a ModelBatch's images, given both models' (n, C, H, W) logits; returns their predicted classes."""
        if self.acc is None:
            self.acc = FinalAccumulator(num_classes(f_logits, q_logits), boundary_radius=self.boundary_radius)
        hw = mb.masks.shape[1:] if mb.masks is not None else f_logits.shape[2:]
        pred_f = predict(f_logits, hw, self.acc.num_classes)
        pred_q = predict(q_logits, hw, self.acc.num_classes)
        self.acc.update(pred_f, pred_q, mb.masks)
        self.keep.update(mb.ids, pred_f, pred_q)
        return pred_f, pred_q

    def result(self) -> "FinalShard":
        """Returns the shard's FinalShard (ModelError when no image was scored)."""
        if self.acc is None:
            raise ModelError("no images to compute final metrics on")
        return FinalShard(self.acc, self.keep, self.preset)


def final_shard(ctx: ShardContext, preset: Preset | DataConfig, batch_size: int, boundary_radius: int, gallery: int,
                names: tuple[str, str] = ("the float model", "the quantized model"),
                on_batch: BatchHook | None = None) -> FinalShard:
    """Returns the final pass of the models ``"float"`` and ``"quant"`` over the shard's images (a shard function).

    ``preset``: a Preset, or a DataConfig whose preset is resolved for the float model. A fixed batch dimension of
    the models wins over ``batch_size`` (short batches are padded, the padding dropped). ``gallery``: how many of
    the most changed images to keep. ``names``: the models as error messages name them. ``on_batch`` is called
    after each batch (in this process only: a hook for per-image consumers).
    """
    scorer = FinalScorer(ctx, preset, batch_size, boundary_radius, gallery, names)
    for mb in image_batches(ctx.dataset, scorer.preset, ctx.ids, scorer.batch_size, scorer.fixed_batch):
        pred_f, pred_q = scorer.score(mb, *scorer.logits(mb))
        if on_batch is not None:
            on_batch(mb.batch, pred_f, pred_q)
        ctx.advance(mb.n)
    return scorer.result()


def merge_final(parts: Sequence[FinalShard]) -> FinalShard:
    """Returns the shards' results, in shard order, merged into new ones (a shard's arrays may be read-only)."""
    first = parts[0]
    counts = FinalAccumulator(first.counts.num_classes, first.counts.cm_float.ignore_index,
                              first.counts.boundary_radius)
    keep = GalleryCollector(first.gallery.k)
    for part in parts:
        counts.merge(part.counts)
        keep.merge(part.gallery)
    return FinalShard(counts, keep, first.preset)


def final_metrics(float_model, quant_model, dataset, preset: Preset, ids: Sequence[str], *, batch_size: int = 1,
                  boundary_radius: int = DEFAULT_BOUNDARY_RADIUS, progress: bool = True,
                  on_batch: BatchHook | None = None) -> FinalMetrics:
    """Returns the FinalMetrics (mIoU, per-class IoU, changed pixels) of two models over ``ids`` of ``dataset``.

    ``float_model``/``quant_model``: ONNX paths, bytes or onnxruntime sessions of the models as they are (their
    first output is the logits). ``preset``: a Preset. Unlabelled data gives the changed-pixel shares only (mIoU
    NaN). ``on_batch(batch, pred_float, pred_quant)`` is called after each batch with the loader's ``Batch`` (ids,
    preprocessed images, masks) and both models' (N, H, W) class ids; it must not keep references to large arrays
    beyond what it needs. Runs in this process (:func:`final_shard` is the pass on any executor).
    """
    names = ("the float model", "the quantized model")
    parts = LocalExecutor(progress=progress).map(
        final_shard, dataset, list(ids), args=(preset, batch_size, boundary_radius, 0, names, on_batch),
        models={"float": float_model, "quant": quant_model}, desc="compare: final metrics")
    return merge_final(parts).counts.metrics()


def num_classes(f_logits: np.ndarray, q_logits: np.ndarray) -> int:
    """Returns the class count C of two (N, C, H, W) logit arrays of one shape (ModelError otherwise)."""
    if f_logits.ndim != 4 or q_logits.shape != f_logits.shape:
        raise ModelError(f"expected both models to output (N, C, H, W) logits of one shape, got {f_logits.shape} "
                         f"and {q_logits.shape}")
    return int(f_logits.shape[1])


def predict(logits: np.ndarray, hw: tuple[int, int], n_classes: int) -> np.ndarray:
    """Returns class ids exactly as ``fcnquant.evaluate`` derives them (bilinear resize to the labels, argmax)."""
    from fcnquant.evaluate import output_to_classes

    return output_to_classes(logits, tuple(hw), n_classes)
