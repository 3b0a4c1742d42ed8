"""The compare report's gallery: the images whose predicted class changed on the most pixels, drawn as inline PNGs.

During the final pass (:mod:`fcnquant.compare.final`), :class:`GalleryCollector` keeps only the ``k`` images with
the most changed pixels (a min-heap of ``k`` entries holding both models' predicted class maps), so memory does not grow
with the number of images. Afterwards :func:`render_gallery` re-reads those images (and masks) from the dataset,
applies the preset's resize/crop so they line up with the predictions, and draws five panels per image: the input,
the ground truth, the float and the quantized prediction in the VOC palette, and a map of the changed pixels.
Each panel is a PNG embedded as a base64 ``data:`` URI, so the HTML report stays one self-contained file.

Changed-pixel map: the input in light grey; changed pixels are green where the quantized model is right and the
float model wrong, red where the float model is right and the quantized one wrong, orange otherwise (both wrong,
or void/unlabelled pixels).
"""
from __future__ import annotations

import base64
import heapq
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fcnquant.data.palette import IGNORE_INDEX, voc_palette

GALLERY_IMAGES = 6  # default number of images in the report's gallery
MAX_SIDE = 320  # panels are drawn at most this many pixels on their longer side

# changed-pixel map colours (RGB)
FIXED = (58, 157, 93)  # quantized right, float wrong
BROKEN = (209, 73, 91)  # float right, quantized wrong
OTHER = (240, 140, 30)  # both wrong, void or unlabelled


@dataclass(frozen=True)
class GalleryImage:
    """One gallery entry: the image's changed-pixel count, per-model pixel accuracy and its rendered panels.

    ``panels``: (title, base64 PNG) pairs, in display order; they are not part of ``to_dict`` (the JSON report
    stays small), so a report read back from JSON has an empty ``panels``. ``classes``: the class ids drawn in the
    label panels (for the legend). Accuracies are percentages over labelled, non-void pixels (None unlabelled).
    """

    image_id: str
    changed: int
    pixels: int
    acc_float: float | None = None
    acc_quant: float | None = None
    classes: tuple[int, ...] = ()
    panels: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def changed_share(self) -> float:
        """Returns the fraction of this image's pixels whose predicted class changed."""
        return self.changed / self.pixels if self.pixels else float("nan")

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict without the panels."""
        return {"image_id": self.image_id, "changed": self.changed, "pixels": self.pixels,
                "acc_float": self.acc_float, "acc_quant": self.acc_quant, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> "GalleryImage":
        """Returns the entry stored by ``to_dict`` (without panels)."""
        return cls(image_id=d["image_id"], changed=int(d["changed"]), pixels=int(d["pixels"]),
                   acc_float=d.get("acc_float"), acc_quant=d.get("acc_quant"), classes=tuple(d.get("classes", ())))


class GalleryCollector:
    """Keeps the ``k`` images with the most changed pixels seen so far (ties: the earlier image) and their predictions.

    Images without a changed pixel are never kept. Memory: ``k`` pairs of class maps, whatever the number of images.
    ``start``: how many images of the whole list come before the first one offered here (a shard's offset), so
    collectors of consecutive slices ``merge`` into exactly the collector of the whole list.
    """

    def __init__(self, k: int = GALLERY_IMAGES, start: int = 0):
        if k < 0:
            raise ValueError(f"gallery size must be >= 0, got {k}")
        self.k = int(k)
        self._heap: list[tuple[tuple[int, int], str, np.ndarray, np.ndarray]] = []
        self._seen = int(start)

    def merge(self, other: "GalleryCollector") -> "GalleryCollector":
        """Offers ``other``'s kept images (their positions are the whole list's) to this one; returns self."""
        for entry in other._heap if self.k else ():
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, entry)
            elif entry[0] > self._heap[0][0]:
                heapq.heapreplace(self._heap, entry)
        return self

    def update(self, ids: Sequence[str], pred_float: np.ndarray, pred_quant: np.ndarray) -> None:
        """Offers one batch: image ids and both models' (N, H, W) predicted class ids."""
        for i, image_id in enumerate(ids):
            self._seen += 1
            if self.k == 0:
                continue
            changed = int(np.count_nonzero(pred_float[i] != pred_quant[i]))
            if changed == 0:
                continue
            key = (changed, -self._seen)  # unique: the heap never compares the arrays
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, (key, image_id, _compact(pred_float[i]), _compact(pred_quant[i])))
            elif key > self._heap[0][0]:
                heapq.heapreplace(self._heap, (key, image_id, _compact(pred_float[i]), _compact(pred_quant[i])))

    def best(self) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
        """Returns (image id, changed pixels, float prediction, quantized prediction), most changed first."""
        return [(image_id, key[0], pf, pq) for key, image_id, pf, pq in sorted(self._heap, reverse=True)]


def _compact(pred: np.ndarray) -> np.ndarray:
    """Returns a copy of a class map in the smallest unsigned dtype that holds it."""
    pred = np.asarray(pred)
    return pred.astype(np.uint8 if pred.size == 0 or pred.max() < 256 else np.uint16)


def display_pair(image: np.ndarray, mask: np.ndarray | None, preset, hw: tuple[int, int]) -> tuple[np.ndarray,
                                                                                                    np.ndarray | None]:
    """Returns (HxWx3 uint8 image, HxW mask or None) as the predictions of size ``hw`` see them.

    For presets scored at the original size that is the image itself; otherwise the preset's resize/crop, with its
    normalisation undone.
    """
    if tuple(image.shape[:2]) == tuple(hw):
        return image, mask
    x, m = preset.transform(image, mask)
    rgb = x.transpose(1, 2, 0) * np.asarray(preset.std, np.float32) + np.asarray(preset.mean, np.float32)
    rgb = np.clip(rgb / np.float32(preset.pixel_scale) + 0.5, 0, 255).astype(np.uint8)
    if tuple(rgb.shape[:2]) != tuple(hw):  # a model whose output size differs from the preset's
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
        if m is not None:
            m = np.asarray(Image.fromarray(m).resize((hw[1], hw[0]), Image.Resampling.NEAREST))
    return rgb, m


def changed_map(image: np.ndarray, pred_float: np.ndarray, pred_quant: np.ndarray,
                labels: np.ndarray | None = None) -> np.ndarray:
    """Returns an HxWx3 uint8 picture of the changed pixels over a light grey copy of ``image`` (module docstring)."""
    gray = image.astype(np.float32).mean(axis=2)
    out = np.repeat((120 + 0.45 * gray).astype(np.uint8)[:, :, None], 3, axis=2)
    changed = pred_float != pred_quant
    out[changed] = OTHER
    if labels is not None:
        valid = labels != IGNORE_INDEX
        out[changed & valid & (pred_quant == labels)] = FIXED
        out[changed & valid & (pred_float == labels)] = BROKEN
    return out


def _png(array: np.ndarray, palette: bool) -> str:
    """Returns the base64 PNG of an RGB array, or of a class map drawn in the VOC palette."""
    from PIL import Image

    if palette:
        img = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="P")
        img.putpalette(voc_palette().ravel().tolist())
    else:
        img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    h, w = array.shape[:2]
    if max(h, w) > MAX_SIDE:
        f = MAX_SIDE / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        img = img.resize(size, Image.Resampling.NEAREST if palette else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    # optimize only the palette panels: on an RGB panel it took 0.48 s against 0.07 s, for 7 % fewer bytes
    img.save(buf, format="PNG", optimize=palette)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float | None:
    valid = labels != IGNORE_INDEX
    n = int(np.count_nonzero(valid))
    return 100.0 * int(np.count_nonzero((pred == labels) & valid)) / n if n else None


def render_gallery(collector: GalleryCollector, dataset, preset) -> tuple[GalleryImage, ...]:
    """Returns the collector's images as GalleryImages with their five panels, re-reading each from ``dataset``."""
    out = []
    for image_id, changed, pf, pq in collector.best():
        if dataset.has_labels:
            image, mask = dataset.load_pair(image_id)
        else:
            image, mask = dataset.load_image(image_id), None
        shown, labels = display_pair(image, mask, preset, pf.shape)
        big = changed_map(shown, pf, pq, labels)
        # the changed map keeps isolated pixels when it is drawn smaller: a pixel that changed marks its whole box
        if max(pf.shape) > MAX_SIDE:
            big = _keep_marks(big, pf != pq)
        panels = [("input", _png(shown, palette=False))]
        panels.append(("ground truth", _png(labels, palette=True)) if labels is not None else ("ground truth", ""))
        panels += [("float", _png(pf, palette=True)), ("quantized", _png(pq, palette=True)),
                   ("changed pixels", _png(big, palette=False))]
        present = np.union1d(np.unique(pf), np.unique(pq))
        if labels is not None:
            present = np.union1d(present, np.unique(labels[labels != IGNORE_INDEX]))
        out.append(GalleryImage(
            image_id=image_id, changed=changed, pixels=int(pf.size),
            acc_float=_accuracy(pf, labels) if labels is not None else None,
            acc_quant=_accuracy(pq, labels) if labels is not None else None,
            classes=tuple(int(c) for c in present), panels=tuple(panels)))
    return tuple(out)


def _keep_marks(picture: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """Returns ``picture`` with every changed pixel grown to the box one displayed pixel covers (red over green
    over orange where boxes overlap), so downscaling cannot blur an isolated changed pixel away."""
    from scipy import ndimage

    r = int(np.ceil(max(changed.shape) / MAX_SIDE)) + 1
    out = picture.copy()
    for colour in (OTHER, FIXED, BROKEN):  # increasing priority
        marks = changed & (picture == np.asarray(colour, np.uint8)).all(axis=2)
        out[ndimage.maximum_filter(marks, size=r) & ~changed] = colour
    return out
