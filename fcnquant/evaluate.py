"""Evaluating a segmentation model (ONNX, via onnxruntime) on a VOC-style split: per-class IoU, mIoU, accuracy."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fcnquant._io import atomic_write_text
from fcnquant.data import VOC_CLASSES, Dataset, resize_bilinear
from fcnquant.data.config import DataConfig
from fcnquant.errors import DataError, ModelError
from fcnquant.execute import Executor, RunConfig, ShardContext, image_batches, is_session, resolve_batch
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




def evaluate(model, data: DataConfig | str | os.PathLike[str] | Dataset | None = None,
             run: RunConfig | Executor | None = None) -> EvalResult:
    """Returns the ``EvalResult`` of ``model`` (ONNX path, bytes, or an onnxruntime session) on a labelled split.

    ``data``: a :class:`~fcnquant.data.DataConfig` (or a dataset root / open ``Dataset``; split ``val``) with the
    images (``ids``, or the first ``num_images``) and the preprocessing (the model's ``fcnquant.preset``
    metadata or ``awesome`` by default; its size follows a fixed model input). Logits whose size differs from the
    labels are resized bilinearly (align_corners=False) before the argmax. A model with a fixed batch of 1 runs
    image by image; a fixed batch k > 1 gets padded batches of k. ``run``: the executor and batch size
    (:class:`~fcnquant.execute.RunConfig`); on a Ray executor the shards' confusion matrices are summed, exactly
    the one-process result (``model`` is then a path or bytes).
    """
    cfg, run = DataConfig.of(data), RunConfig.of(run)
    executor = run.resolved()
    dataset = cfg.open(model, progress=executor.progress)
    if not dataset.has_labels:
        raise DataError(f"evaluation needs segmentation masks; dataset {dataset.describe()} has none")
    chosen = cfg.take(dataset)
    if is_session(model):
        model_name = "<session>"
    else:
        model_name = "<bytes>" if isinstance(model, bytes) else str(model)
    log.info("evaluating %s on %s", model_name, dataset.describe())
    start = time.perf_counter()
    parts = executor.map(eval_shard, dataset, chosen, args=(cfg, run.batch_size, len(VOC_CLASSES)),
                         models={"model": model}, desc="eval")
    seconds = time.perf_counter() - start
    cm = ConfusionMatrix(len(VOC_CLASSES))
    for confusion, _ in parts:
        cm.matrix += confusion
    cm.check_labelled(len(chosen), dataset.describe())
    return result_from_confusion(cm, len(chosen), seconds, model=model_name, data=str(dataset.root),
                                 split=dataset.split, preset=parts[0][1])


def eval_shard(ctx: ShardContext, data: DataConfig, batch_size: int, num_classes: int) -> tuple[np.ndarray, dict]:
    """Returns (confusion matrix, preset dict) of the model ``"model"`` on the shard's images (a shard function)."""
    from fcnquant.runtime import input_spec, run_logits

    session = ctx.session("model")
    _, shape = input_spec(session)
    pre = data.preset_for(session)
    batch_size, fixed_batch = resolve_batch(batch_size, shape[0])
    log.info("preset %s, batch %d", pre.describe(), batch_size)
    cm = ConfusionMatrix(num_classes)
    for mb in image_batches(ctx.dataset, pre, ctx.ids, batch_size, fixed_batch):
        out = np.asarray(run_logits(session, mb.feed)[0])[:mb.n]
        cm.update(output_to_classes(out, mb.masks.shape[1:], num_classes), mb.masks)
        ctx.advance(mb.n)
    return cm.matrix, pre.to_dict()


def result_from_confusion(cm: ConfusionMatrix, images: int, seconds: float, *, model: str = "", data: str = "",
                          split: str | None = None, preset: dict | None = None) -> EvalResult:
    """Returns the ``EvalResult`` of a confusion matrix accumulated over ``images`` images in ``seconds``."""
    iou = cm.iou() * 100
    return EvalResult(
        miou=cm.miou(), miou_awesome=cm.miou_awesome(),
        per_class_iou={name: float(v) for name, v in zip(VOC_CLASSES, iou)},
        pixel_acc=cm.pixel_accuracy() * 100, images=images,
        images_per_s=images / seconds if seconds > 0 else float("nan"), seconds=seconds,
        model=model, data=data, split=split, preset=dict(preset or {}), confusion=cm.matrix.copy(),
    )
