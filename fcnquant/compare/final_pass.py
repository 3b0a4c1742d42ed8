"""Final metrics of two models from their plain onnxruntime sessions: one ``fcnquant eval`` run of each, shared I/O.

Each batch is decoded once and run through both models as they are (no exposed tensors, so onnxruntime keeps
every fusion and the quantized model its integer kernels): the predictions are bit for bit what
``fcnquant.evaluate`` computes, at the cost of two evaluations. Only integer counters are kept (confusion
matrices, changed pixels), so memory is constant in the number of images.

``on_batch(batch, pred_float, pred_quant)`` is called after each batch with the loader's ``Batch`` (ids,
preprocessed images, masks) and both models' (N, H, W) class ids: the hook for per-image consumers such as an
image gallery. It must not keep references to large arrays beyond what it needs.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np

from fcnquant.compare.batching import pad_batch
from fcnquant.compare.final import DEFAULT_BOUNDARY_RADIUS, FinalAccumulator
from fcnquant.compare.report import FinalMetrics
from fcnquant.errors import ModelError

log = logging.getLogger(__name__)

BatchHook = Callable[[object, np.ndarray, np.ndarray], None]


def final_metrics(float_session, quant_session, dataset, preset, ids: Sequence[str], **options) -> FinalMetrics:
    """Returns the FinalMetrics (mIoU, per-class IoU, changed pixels) of two plain sessions over ``ids``:
    :func:`to_final_metrics` of :func:`final_counts` (the same keyword options)."""
    return to_final_metrics(final_counts(float_session, quant_session, dataset, preset, ids, **options))


def final_counts(
    float_session,
    quant_session,
    dataset,
    preset,
    ids: Sequence[str],
    *,
    batch_size: int = 1,
    fixed_batch: int | None = None,
    boundary_radius: int = DEFAULT_BOUNDARY_RADIUS,
    progress: bool = True,
    on_batch: BatchHook | None = None,
) -> FinalAccumulator:
    """Returns the FinalAccumulator (integer counters; ``merge`` adds another's) of two plain sessions over ``ids``.

    ``float_session``/``quant_session``: onnxruntime sessions of the models as they are (their first output is
    the logits). ``fixed_batch``: a fixed batch dimension of the models (short batches are padded with the last
    image, the padding is dropped). Unlabelled data gives the changed-pixel shares only (mIoU NaN).
    """
    from tqdm import tqdm

    from fcnquant.data import iter_batches
    from fcnquant.runtime import run_logits

    acc: FinalAccumulator | None = None
    with tqdm(total=len(ids), desc="compare: final metrics", unit="img", disable=not progress) as bar:
        for batch in iter_batches(dataset, preset, ids, batch_size):
            n = batch.images.shape[0]
            images = pad_batch(batch.images, fixed_batch)
            f_logits = np.asarray(run_logits(float_session, images)[0])[:n]
            q_logits = np.asarray(run_logits(quant_session, images)[0])[:n]
            if acc is None:
                acc = FinalAccumulator(num_classes(f_logits, q_logits), boundary_radius=boundary_radius)
            hw = batch.masks.shape[1:] if batch.masks is not None else f_logits.shape[2:]
            pred_f = predict(f_logits, hw, acc.num_classes)
            pred_q = predict(q_logits, hw, acc.num_classes)
            del f_logits, q_logits
            acc.update(pred_f, pred_q, batch.masks)
            if on_batch is not None:
                on_batch(batch, pred_f, pred_q)
            bar.update(n)
    if acc is None:
        raise ModelError("no images to compute final metrics on")
    return acc


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


def to_final_metrics(final: FinalAccumulator) -> FinalMetrics:
    """Returns the FinalMetrics of an accumulator (class names are VOC's when it has 21 classes)."""
    from fcnquant.data import VOC_CLASSES

    n = final.num_classes
    names = tuple(VOC_CLASSES) if n == len(VOC_CLASSES) else tuple(f"class {k}" for k in range(n))
    nan = math.nan
    if final.labelled:
        cf, cq = final.cm_float, final.cm_quant
        iou_f, iou_q = tuple(float(v) for v in cf.iou() * 100), tuple(float(v) for v in cq.iou() * 100)
        scores = (cf.miou(), cq.miou(), cf.miou_awesome(), cq.miou_awesome(), cf.pixel_accuracy() * 100,
                  cq.pixel_accuracy() * 100)
    else:
        iou_f = iou_q = tuple(nan for _ in range(n))
        scores = (nan,) * 6
    return FinalMetrics(
        class_names=names, labelled=final.labelled, miou_float=scores[0], miou_quant=scores[1],
        miou_awesome_float=scores[2], miou_awesome_quant=scores[3], iou_float=iou_f, iou_quant=iou_q,
        pixel_acc_float=scores[4], pixel_acc_quant=scores[5], pixels=final.pixels, changed=final.changed,
        boundary_pixels=final.boundary_pixels, boundary_changed=final.boundary_changed,
        boundary_radius=final.boundary_radius,
    )
