"""VOC palette and mask decoding against the palette definition (bit formula computed here independently)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnquant.data import VOC_CLASSES, read_mask, voc_palette
from fcnquant.data.palette import rgb_mask_to_index
from fcnquant.errors import DataError


def reference_palette():
    """The VOC colour map as the devkit defines it: label bits spread over R, G, B from the top bit down."""
    rows = []
    for label in range(256):
        r = g = b = 0
        j = label
        for i in range(8):
            r |= ((j >> 0) & 1) << (7 - i)
            g |= ((j >> 1) & 1) << (7 - i)
            b |= ((j >> 2) & 1) << (7 - i)
            j >>= 3
        rows.append((r, g, b))
    return np.array(rows, dtype=np.uint8)


def test_palette_matches_definition():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal, reference_palette())
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)
    assert tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[15]) == (192, 128, 128)  # person
    assert tuple(pal[255]) == (224, 224, 192)


def test_class_names():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"


def test_palette_png_values_are_indices(tmp_path):
    values = np.array([[0, 1, 20], [255, 15, 7]], dtype=np.uint8)
    im = Image.frombytes("P", (3, 2), values.tobytes())
    im.putpalette(reference_palette().ravel().tolist())
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), values)


def test_rgb_mask_decoded_through_palette(tmp_path):
    values = np.array([[0, 1, 20], [255, 15, 7]], dtype=np.uint8)
    rgb = reference_palette()[values]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), values)
    np.testing.assert_array_equal(rgb_mask_to_index(rgb), values)


def test_rgb_mask_unknown_colour(tmp_path):
    rgb = reference_palette()[np.zeros((2, 2), np.uint8)]
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png.*\(1,2,3\)"):
        read_mask(tmp_path / "bad.png")


def test_rgb_mask_palette_colour_of_an_invalid_class(tmp_path):
    rgb = reference_palette()[np.array([[0, 40]], np.uint8)]
    Image.fromarray(rgb).save(tmp_path / "c40.png")
    with pytest.raises(DataError, match=r"c40\.png.*40"):
        read_mask(tmp_path / "c40.png")
