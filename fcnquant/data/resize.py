"""Bilinear resizing of float score maps, as ``torch.nn.functional.interpolate(mode='bilinear',
align_corners=False)`` does it (half-pixel centres, clamped at the border, no antialiasing)."""
from __future__ import annotations

import numpy as np


def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (lower index, upper index, upper weight) for each output position along one axis."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Returns ``x`` (..., h, w) resized to (..., H, W) with align_corners=False bilinear interpolation."""
    h, w = x.shape[-2:]
    oh, ow = hw
    if (h, w) == (oh, ow):
        return x
    x = np.asarray(x, dtype=np.float32)
    y0, y1, wy = _axis(h, oh)
    x0, x1, wx = _axis(w, ow)
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx
