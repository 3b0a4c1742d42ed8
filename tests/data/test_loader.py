"""Batches (fcnquant.data.loader.iter_batches): shapes per preset, the last short batch, masks on request."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.data import get_preset, iter_batches, open_dataset
from fcnquant.errors import DataError


def _tiny_voc(tmp_path, sizes):
    from PIL import Image

    from fcnquant.data import voc_palette

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k, (h, w) in enumerate(sizes):
        i = f"im{k}"
        ids.append(i)
        Image.fromarray(np.full((h, w, 3), 10 * k, np.uint8)).save(tmp_path / "JPEGImages" / f"{i}.jpg")
        m = Image.frombytes("P", (w, h), bytes([k % 21]) * (h * w))
        m.putpalette(voc_palette().ravel().tolist())
        m.save(tmp_path / "SegmentationClass" / f"{i}.png")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids))
    return open_dataset(tmp_path, "val")


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_batches_shapes(tmp_path, prefetch):
    ds = _tiny_voc(tmp_path, [(8, 10), (10, 8), (9, 9), (8, 8), (12, 6)])
    batches = list(iter_batches(ds, get_preset("awesome", size=4), batch_size=2, prefetch=prefetch))
    assert [b.ids for b in batches] == [["im0", "im1"], ["im2", "im3"], ["im4"]]
    assert batches[0].images.shape == (2, 3, 4, 4) and batches[0].images.dtype == np.float32
    assert batches[0].masks.shape == (2, 4, 4) and batches[0].masks.dtype == np.uint8
    assert (batches[1].masks[1] == 3).all()
    unlabelled = list(iter_batches(ds, get_preset("mmseg", size=4), ["im3"], with_masks=False))
    assert unlabelled[0].masks is None
    kr = list(iter_batches(ds, get_preset("mmseg-keep-ratio", size=(16, 64)), batch_size=3))
    assert len(kr) == 5 and kr[0].images.shape == (1, 3, 16, 20) and kr[0].masks.shape == (1, 8, 10)
    with pytest.raises(DataError, match="batch size"):
        list(iter_batches(ds, get_preset("awesome"), batch_size=0))
