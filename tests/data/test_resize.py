"""Bilinear resize (fcnquant.data.resize) against values worked by hand."""
from __future__ import annotations

import numpy as np

from fcnquant.data import resize_bilinear


def test_resize_bilinear_hand_values():
    x = np.array([[[0.0, 8.0]]])  # 1x1x2
    np.testing.assert_allclose(resize_bilinear(x, (1, 4)), [[[0, 2, 6, 8]]])  # align_corners=False
    y = np.array([[[1.0, 3.0, 5.0, 7.0]]])
    np.testing.assert_allclose(resize_bilinear(y, (1, 2)), [[[2.0, 6.0]]])  # no antialiasing
    z = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert resize_bilinear(z, (2, 3)) is z
