"""Calibration subsets: determinism, subset property, class balance, id files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnquant.data import load_ids, open_dataset, save_ids, select_calibration_ids, voc_palette
from fcnquant.errors import DataError


def make_labelled(base, class_sets):
    """A VOC folder whose image k's mask holds exactly the classes in class_sets[k] (plus some void)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k, classes in enumerate(class_sets):
        i = f"img{k:03d}"
        ids.append(i)
        Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(base / "JPEGImages" / f"{i}.jpg")
        vals = np.full(32, 255, np.uint8)
        vals[: len(classes)] = sorted(classes)
        m = Image.frombytes("P", (8, 4), vals.tobytes())
        m.putpalette(voc_palette().ravel().tolist())
        m.save(base / "SegmentationClass" / f"{i}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids))
    return open_dataset(base, "train")


def test_plain_selection_is_deterministic_and_nested(tmp_path):
    ds = make_labelled(tmp_path, [{0}] * 30)
    a = select_calibration_ids(ds, 8, seed=3)
    assert a == select_calibration_ids(ds, 8, seed=3)
    assert len(a) == 8 and len(set(a)) == 8
    assert a == sorted(a, key=ds.ids.index)  # listed in dataset order
    assert set(a) <= set(select_calibration_ids(ds, 15, seed=3))
    assert a != select_calibration_ids(ds, 8, seed=4)
    perm = np.random.default_rng(3).permutation(30)[:8]  # documented rule: first N of a seeded permutation
    assert a == [ds.ids[i] for i in sorted(perm)]
    assert select_calibration_ids(ds, None) == ds.ids
    assert select_calibration_ids(ds, 100) == ds.ids
    with pytest.raises(DataError, match="at least 1"):
        select_calibration_ids(ds, 0)


def test_balanced_covers_every_class(tmp_path):
    rng = np.random.default_rng(0)
    sets = [{0, int(c)} for c in rng.choice([1, 2, 3], 40)]  # common classes
    for k, rare in zip((5, 17, 33), ({0, 7}, {0, 12, 13}, {0, 20})):
        sets[k] = rare  # classes 7, 12, 13, 20 appear in one image each
    ds = make_labelled(tmp_path, sets)
    for seed in range(5):
        chosen = select_calibration_ids(ds, 6, seed=seed, balanced=True)
        assert len(chosen) == 6 and len(set(chosen)) == 6
        covered = set().union(*(sets[ds.ids.index(i)] for i in chosen))
        assert covered == {0, 1, 2, 3, 7, 12, 13, 20}
        assert chosen == select_calibration_ids(ds, 6, seed=seed, balanced=True)
    plain_hits = sum(
        {"img005", "img017", "img033"} <= set(select_calibration_ids(ds, 6, seed=s)) for s in range(20))
    assert plain_hits < 20  # without balancing the rare images are usually missed


def test_balanced_with_too_small_budget_covers_what_it_can(tmp_path):
    sets = [{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5, 6}]
    ds = make_labelled(tmp_path, sets)
    chosen = select_calibration_ids(ds, 2, seed=0, balanced=True)
    covered = set().union(*(sets[ds.ids.index(i)] for i in chosen))
    assert "img004" in chosen  # greedy picks the image adding most classes first
    assert len(covered) == 4  # the most two of these images can cover


def test_balanced_needs_labels(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.png")
    ds = open_dataset(tmp_path)
    assert select_calibration_ids(ds, 1, seed=0) in (["a"], ["b"])
    with pytest.raises(DataError, match="needs masks"):
        select_calibration_ids(ds, 1, balanced=True)


def test_save_and_load_ids(tmp_path):
    save_ids(tmp_path / "ids.txt", ["b", "a", "2007_000032"])
    assert (tmp_path / "ids.txt").read_text() == "b\na\n2007_000032\n"
    assert load_ids(tmp_path / "ids.txt") == ["b", "a", "2007_000032"]
    (tmp_path / "c.txt").write_text("# chosen\n\n x \ny\n")
    assert load_ids(tmp_path / "c.txt") == ["x", "y"]
    with pytest.raises(DataError, match="not found"):
        load_ids(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_ids(tmp_path / "e.txt")
