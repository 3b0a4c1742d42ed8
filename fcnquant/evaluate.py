"""Evaluating a segmentation model (ONNX, via onnxruntime) on a VOC-style split: per-class IoU, mIoU, accuracy."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fcnquant._io import atomic_write_text
from fcnquant.data import (VOC_CLASSES, Dataset, Preset, iter_batches, open_dataset, preset_for_session,
                           resize_bilinear, resolve_data, take_ids)
from fcnquant.errors import DataError, ModelError
from fcnquant.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scores of one evaluation; mIoU, IoU and accuracies are percentages (0..100), NaN for empty classes.

    ``miou``: mmseg convention (classes with an empty union skipped); ``miou_awesome``: awesome's convention
    (empty classes count 0). ``confusion[t, p]``: pixels of true class t predicted as p.
    """

    miou: float
    miou_awesome: float
    per_class_iou: dict[str, float]
    pixel_acc: float
    images: int
    images_per_s: float
    seconds: float = 0.0
    model: str = ""
    data: str = ""
    split: str | None = None
    preset: dict = field(default_factory=dict)
    confusion: np.ndarray | None = field(default=None, repr=False)

    @property
    def classes_scored(self) -> int:
        """Number of classes with a non-empty union (those averaged by ``miou``)."""
        return sum(1 for v in self.per_class_iou.values() if not math.isnan(v))

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (NaN written as null)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 4)

        return {
            "format_version": 1,
            "model": self.model, "data": self.data, "split": self.split, "preset": self.preset,
            "images": self.images, "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 3),
            "miou": num(self.miou), "miou_awesome": num(self.miou_awesome), "pixel_acc": num(self.pixel_acc),
            "classes_scored": self.classes_scored,
            "per_class_iou": {k: num(v) for k, v in self.per_class_iou.items()},
            "confusion": self.confusion.tolist() if self.confusion is not None else None,
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes ``to_dict()`` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def format_table(self) -> str:
        """Returns a readable per-class table followed by the summary scores."""
        labelled = self.confusion.sum(1) if self.confusion is not None else None
        lines = [f"{'class':<14}{'IoU %':>8}{'labelled px':>14}"]
        for c, (name, v) in enumerate(self.per_class_iou.items()):
            iou = "    -   " if math.isnan(v) else f"{v:8.2f}"
            px = f"{int(labelled[c]):14d}" if labelled is not None else ""
            lines.append(f"{name:<14}{iou}{px}")
        lines += [
            "",
            f"mIoU (mmseg: empty classes skipped, {self.classes_scored}/{len(self.per_class_iou)} scored): "
            f"{self.miou:.2f}",
            f"mIoU (awesome: empty classes count 0): {self.miou_awesome:.2f}",
            f"pixel accuracy: {self.pixel_acc:.2f}",
            f"images: {self.images} in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s)",
        ]
        return "\n".join(lines)


def output_to_classes(out: np.ndarray, hw: tuple[int, int], num_classes: int = 21) -> np.ndarray:
    """Returns (N, H, W) class ids from model output: logits (N, C, h, w) or class ids (N, h, w) / (N, 1, h, w)."""
    if out.ndim == 4 and out.shape[1] == 1 and not np.issubdtype(out.dtype, np.floating):
        out = out[:, 0]
    if out.ndim == 3 and not np.issubdtype(out.dtype, np.floating):
        if out.shape[1:] != hw:
            raise ModelError(f"model outputs class ids of size {out.shape[1:]} but the labels are {hw}")
        return out
    if out.ndim != 4 or out.shape[1] != num_classes:
        raise ModelError(f"expected logits of shape (N, {num_classes}, H, W) as the first output, got {out.shape}")
    if not np.isfinite(out).all():
        log.warning("model output holds %d non-finite values", int((~np.isfinite(out)).sum()))
    if out.shape[2:] != hw:
        out = resize_bilinear(out, hw)
    return out.argmax(1)




def evaluate(
    model,
    data: str | os.PathLike[str] | Dataset | None = None,
    split: str | None = "val",
    preset: str | Preset | None = None,
    num_images: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
    *,
    ids: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    threads: int = 0,
    ann_dir: str | None = None,
) -> EvalResult:
    """Returns the ``EvalResult`` of ``model`` (ONNX path, bytes, or an onnxruntime session) on a labelled split.

    ``data``: a dataset root (or an open ``Dataset``); default: ``fcnquant.data.resolve_data`` (the built-in
    synthetic VOC for a shipped demo model, else a VOC found on the machine, else the synthetic set with a
    warning). ``ann_dir`` picks the annotation folder (``fcnquant.data.open_dataset``). ``preset`` defaults to the
    model's ``fcnquant.preset`` metadata or ``awesome``; its size follows a fixed model input. ``ids`` (or the
    first ``num_images`` of the split) restrict the images. Logits whose size differs from the labels are resized
    bilinearly (align_corners=False) before the argmax. A model with a fixed batch of 1 runs image by image; a
    fixed batch k > 1 gets padded batches of k.
    """
    from tqdm import tqdm

    from fcnquant.runtime import input_spec, make_session, run_logits

    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        session, model_name = model, "<session>"
    else:
        session = make_session(model, threads=threads)
        model_name = "<bytes>" if isinstance(model, bytes) else str(model)
    _, shape = input_spec(session)
    pre = preset_for_session(session, preset, size=size, mean=mean, std=std)
    if isinstance(data, Dataset):
        dataset = data
    else:
        dataset = open_dataset(resolve_data(data, model, progress=progress).root, split, ann_dir)
    if not dataset.has_labels:
        raise DataError(f"evaluation needs segmentation masks; dataset {dataset.describe()} has none")
    chosen = take_ids(dataset, ids, num_images)
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    fixed_batch = shape[0]
    if fixed_batch is not None and fixed_batch != batch_size:
        log.info("model has a fixed batch of %d; running %s", fixed_batch,
                 "image by image" if fixed_batch == 1 else f"padded batches of {fixed_batch}")
        batch_size = fixed_batch
    log.info("evaluating %s on %s with preset %s", model_name, dataset.describe(), pre.describe())
    cm = ConfusionMatrix(len(VOC_CLASSES))
    start = time.perf_counter()
    with tqdm(total=len(chosen), desc="eval", unit="img", disable=not progress) as bar:
        for batch in iter_batches(dataset, pre, chosen, batch_size):
            images = batch.images
            n = images.shape[0]
            if fixed_batch is not None and n < fixed_batch:
                images = np.concatenate([images, np.repeat(images[-1:], fixed_batch - n, axis=0)])
            out = np.asarray(run_logits(session, images)[0])[:n]
            cm.update(output_to_classes(out, batch.masks.shape[1:], len(VOC_CLASSES)), batch.masks)
            bar.update(n)
    seconds = time.perf_counter() - start
    iou = cm.iou() * 100
    return EvalResult(
        miou=cm.miou(), miou_awesome=cm.miou_awesome(),
        per_class_iou={name: float(v) for name, v in zip(VOC_CLASSES, iou)},
        pixel_acc=cm.pixel_accuracy() * 100, images=len(chosen),
        images_per_s=len(chosen) / seconds if seconds > 0 else float("nan"), seconds=seconds,
        model=model_name, data=str(dataset.root), split=dataset.split, preset=pre.to_dict(), confusion=cm.matrix.copy(),
    )
