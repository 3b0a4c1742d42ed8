"""PASCAL VOC class names, the VOC colour palette, and decoding of palette or RGB-coded masks."""
from __future__ import annotations

import numpy as np

from fcnquant.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """Returns the (256, 3) uint8 VOC colour map: entry j is the RGB colour of label value j.

    Bit k of the label goes to channel k % 3 at bit position 7 - k // 3, so 0=(0,0,0), 1=(128,0,0),
    2=(0,128,0), 255=(224,224,192). All 256 colours are distinct.
    """
    labels = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.uint8)
    for k in range(8):  # label bit k -> channel k % 3, bit 7 - k // 3
        pal[:, k % 3] |= (((labels >> k) & 1) << (7 - k // 3)).astype(np.uint8)
    return pal


def rgb_mask_to_index(rgb: np.ndarray, source: str = "mask") -> np.ndarray:
    """Returns the HxW uint8 label values of an HxWx3 RGB-coded mask, mapping each colour through the VOC palette.

    Raises DataError naming ``source`` and the first unknown colours when a pixel is not a palette colour.
    """
    pal = voc_palette().astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes)
    sorted_codes = pal_codes[order]
    rgb = np.asarray(rgb)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    pos = np.minimum(np.searchsorted(sorted_codes, codes), 255)
    out = np.where(sorted_codes[pos] == codes, order[pos], -1)
    if (out < 0).any():
        bad = np.unique(codes[out < 0])
        shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in bad[:5].tolist())
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{source}: RGB mask has colours that are not VOC palette colours: {shown}{more}")
    return out.astype(np.uint8)
