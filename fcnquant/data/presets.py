"""Preprocessing presets: how an image (and its mask) becomes the float32 CHW tensor a model was trained on.

Built-in presets (``PRESETS``):

``awesome`` (awesome-semantic-segmentation-pytorch, fcn8s/16s/32s), mode ``short-crop``, size 320:
    resize the short side to 320 with PIL bilinear, the long side to ``int(long * 320 / short)``; center-crop
    320x320 at ``x1 = round((w - 320) / 2)``, ``y1 = round((h - 320) / 2)`` (Python's round, half to even);
    RGB / 255, then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). The mask is resized with
    nearest neighbour and cropped identically. This is awesome's ``_val_sync_transform`` + ``ToTensor`` +
    ``Normalize``.
``mmseg`` (mmsegmentation fcn_r50/r101-d8), mode ``fixed``, size 512x512 (mmsegmentation's deployment input shape):
    resize image (bilinear) and mask (nearest) to exactly 512x512; RGB on 0..255 minus mean
    (123.675, 116.28, 103.53), divided by std (58.395, 57.12, 57.375).
``mmseg-keep-ratio`` (mmsegmentation's own test protocol), mode ``keep-ratio``, size (512, 2048):
    ``Resize(scale=(2048, 512), keep_ratio=True)``: factor ``min(2048 / long, 512 / short)``, new size
    ``int(w * f + 0.5) x int(h * f + 0.5)``; same normalisation as ``mmseg``. The mask keeps its original size
    (``score_original``): the evaluator resizes the logits bilinearly (align_corners=False) to the label.

Resizing uses PIL's bilinear filter, which is cv2's INTER_LINEAR when enlarging and antialiased when shrinking.
Custom presets: ``get_preset(name, size=..., mean=..., std=...)``; mean/std are given on the preset's pixel scale.
When a model has a fixed input (H, W), ``get_preset(..., model_hw=(H, W))`` makes the size follow it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fcnquant.errors import DataError, ModelError

MODES = ("short-crop", "fixed", "keep-ratio")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preset:
    """A named preprocessing protocol.

    ``size`` is the output (H, W) for modes ``short-crop`` and ``fixed``, and (short side, long side cap) for
    ``keep-ratio``. Normalisation: ``(rgb * pixel_scale - mean) / std`` per channel, RGB order.
    ``score_original``: masks stay at their original size and logits are resized to them for scoring.
    """

    name: str
    mode: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float
    score_original: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"preset mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if len(self.size) != 2 or min(self.size) < 1:
            raise DataError(f"preset size must be two positive integers, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError(f"preset mean and std need 3 values each, got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise DataError(f"preset std must be positive, got {self.std}")

    @property
    def variable_size(self) -> bool:
        """Whether output sizes depend on the input image (then batches hold one image)."""
        return self.mode == "keep-ratio"

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """Returns the (H, W) of the tensor this preset makes from an h x w image."""
        if self.mode == "keep-ratio":
            return _keep_ratio_hw(h, w, self.size)
        return self.size

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns (3xHxW float32 normalised image, mask or None) for an HxWx3 uint8 RGB image and HxW mask."""
        from PIL import Image

        img = Image.fromarray(image)
        msk = Image.fromarray(mask) if mask is not None else None
        h, w = image.shape[:2]
        if self.mode == "short-crop":
            th, tw = self.size
            if tw / w >= th / h:  # width is the short side relative to the target (awesome's w <= h branch)
                ow, oh = tw, int(1.0 * h * tw / w)
            else:
                oh, ow = th, int(1.0 * w * th / h)
            img = img.resize((ow, oh), Image.Resampling.BILINEAR)
            x1, y1 = int(round((ow - tw) / 2.0)), int(round((oh - th) / 2.0))
            img = img.crop((x1, y1, x1 + tw, y1 + th))
            if msk is not None:
                msk = msk.resize((ow, oh), Image.Resampling.NEAREST).crop((x1, y1, x1 + tw, y1 + th))
        elif self.mode == "fixed":
            th, tw = self.size
            img = img.resize((tw, th), Image.Resampling.BILINEAR)
            if msk is not None:
                msk = msk.resize((tw, th), Image.Resampling.NEAREST)
        else:
            th, tw = _keep_ratio_hw(h, w, self.size)
            img = img.resize((tw, th), Image.Resampling.BILINEAR)
            if msk is not None and not self.score_original:
                msk = msk.resize((tw, th), Image.Resampling.NEAREST)
        return self.normalize(np.asarray(img)), (np.asarray(msk, dtype=np.uint8) if msk is not None else None)

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """Returns the 3xHxW float32 ``(rgb * pixel_scale - mean) / std`` of an HxWx3 uint8 image."""
        x = rgb.astype(np.float32) * np.float32(self.pixel_scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def describe(self) -> str:
        """Returns a one-line description (name, mode, size, mean, std)."""
        size = f"short {self.size[0]}, long <= {self.size[1]}" if self.mode == "keep-ratio" else "x".join(
            map(str, self.size))
        return (f"{self.name} ({self.mode} {size}, mean {list(self.mean)}, std {list(self.std)}, "
                f"scale {self.pixel_scale:g})")

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict of the preset's fields."""
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _keep_ratio_hw(h: int, w: int, size: tuple[int, int]) -> tuple[int, int]:
    short, long = min(size), max(size)
    f = min(long / max(h, w), short / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


PRESETS: dict[str, Preset] = {
    "awesome": Preset("awesome", "short-crop", (320, 320), IMAGENET_MEAN, IMAGENET_STD, 1.0 / 255.0),
    "mmseg": Preset("mmseg", "fixed", (512, 512), MMSEG_MEAN, MMSEG_STD, 1.0),
    "mmseg-keep-ratio": Preset("mmseg-keep-ratio", "keep-ratio", (512, 2048), MMSEG_MEAN, MMSEG_STD, 1.0,
                               score_original=True),
}


def _as_size(size: int | Sequence[int], mode: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return (int(size), 4 * int(size)) if mode == "keep-ratio" else (int(size), int(size))
    vals = tuple(int(v) for v in size)
    if len(vals) == 1:
        return _as_size(vals[0], mode)
    if len(vals) != 2:
        raise DataError(f"size must be one integer or (H, W), got {size}")
    return vals  # type: ignore[return-value]


def get_preset(
    name: str | Preset | None = "awesome",
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model_hw: tuple[int, int] | None = None,
) -> Preset:
    """Returns the preset ``name`` (default ``awesome``) with optional custom size, mean and std.

    ``size``: an int S (SxS; for keep-ratio short side S with long cap 4S) or (H, W) (keep-ratio: (short, long)).
    ``model_hw``: the model's fixed input (H, W) or None. With a fixed input the size follows it (a 160x160 model
    gets awesome at 160x160); an explicit ``size`` that disagrees, or a keep-ratio preset, raises ModelError.
    """
    explicit_size = size is not None
    if isinstance(name, Preset):
        base = name
        explicit_size = explicit_size or name not in PRESETS.values()
    else:
        key = (name or "awesome").lower()
        if key not in PRESETS:
            raise DataError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
        base = PRESETS[key]
    changes: dict = {}
    if size is not None:
        changes["size"] = _as_size(size, base.mode)
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        changes["std"] = tuple(float(v) for v in std)
    if model_hw is not None:
        model_hw = (int(model_hw[0]), int(model_hw[1]))
        if base.mode == "keep-ratio":
            raise ModelError(
                f"preset '{base.name}' makes inputs of varying size but the model has a fixed "
                f"{model_hw[0]}x{model_hw[1]} input; use a fixed-size preset such as 'mmseg'"
            )
        wanted = changes.get("size", base.size)
        if explicit_size and wanted != model_hw:
            raise ModelError(
                f"size {wanted[0]}x{wanted[1]} does not fit the model's fixed "
                f"{model_hw[0]}x{model_hw[1]} input"
            )
        changes["size"] = model_hw
    return dataclasses.replace(base, **changes) if changes else base


PRESET_METADATA_KEY = "fcnquant.preset"


def preset_for_session(
    session,
    name: str | Preset | None = None,
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preset:
    """Returns the preset to feed an onnxruntime ``session``, its size following a fixed model input.

    ``name=None`` uses the model's metadata_props entry ``fcnquant.preset`` when present, else ``awesome``.
    """
    from fcnquant.runtime import fixed_hw

    if name is None:
        try:
            name = session.get_modelmeta().custom_metadata_map.get(PRESET_METADATA_KEY) or None
        except Exception:  # a session-like object without metadata
            name = None
    return get_preset(name, size=size, mean=mean, std=std, model_hw=fixed_hw(session))
