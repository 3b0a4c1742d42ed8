"""Synthetic VOC: layout, palette masks, void borders, determinism, built-in cache, CLI."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from fcnquant.data import VOC_CLASSES, builtin_dataset, open_dataset, voc_palette, write_synthetic_voc
from fcnquant.data.synth import _void_band, render_scene
from fcnquant.errors import DataError


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_contents(tmp_path):
    out = write_synthetic_voc(tmp_path / "devkit", train=3, val=2, size=40, seed=5, progress=False)
    voc = out / "VOC2012"
    seg = voc / "ImageSets" / "Segmentation"
    assert (seg / "train.txt").read_text() == "train_000000\ntrain_000001\ntrain_000002\n"
    assert (seg / "val.txt").read_text() == "val_000000\nval_000001\n"
    assert (seg / "trainval.txt").read_text() == (seg / "train.txt").read_text() + (seg / "val.txt").read_text()
    assert sorted(p.name for p in (voc / "JPEGImages").iterdir()) == [
        "train_000000.jpg", "train_000001.jpg", "train_000002.jpg", "val_000000.jpg", "val_000001.jpg"]
    total = np.zeros(256, np.int64)
    for mask_path in (voc / "SegmentationClass").iterdir():
        m = Image.open(mask_path)
        assert m.format == "PNG" and m.mode == "P" and m.size == (40, 40)
        assert m.getpalette()[:768] == voc_palette().ravel().tolist()
        total += np.bincount(np.asarray(m).ravel(), minlength=256)
        img = Image.open(voc / "JPEGImages" / mask_path.name.replace(".png", ".jpg"))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (40, 40)
    values = set(np.flatnonzero(total).tolist())
    assert values <= set(range(21)) | {255}
    assert 255 in values and 0 in values and len(values - {0, 255}) >= 1
    meta = json.loads((voc / "synth.json").read_text())
    assert meta["size"] == 40 and meta["seed"] == 5
    assert sum(meta["pixel_counts"]["train"]) == 3 * 40 * 40
    # usable through every root form
    ds = open_dataset(out, "train")
    assert ds.ids == ["train_000000", "train_000001", "train_000002"] and ds.has_labels
    image, mask = ds.load_pair("train_000001")
    assert image.shape == (40, 40, 3) and mask.shape == (40, 40)


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_voc(tmp_path / "a", train=2, val=2, size=32, seed=7, progress=False)
    b = write_synthetic_voc(tmp_path / "b", train=2, val=2, size=32, seed=7, progress=False)
    c = write_synthetic_voc(tmp_path / "c", train=2, val=2, size=32, seed=8, progress=False)
    fa, fb, fc = files(a), files(b), files(c)
    assert fa == fb
    assert fa["VOC2012/JPEGImages/train_000000.jpg"] != fc["VOC2012/JPEGImages/train_000000.jpg"]
    # image i depends only on (seed, split, i): a larger set starts with the same images
    d = write_synthetic_voc(tmp_path / "d", train=3, val=1, size=32, seed=7, progress=False)
    assert files(d)["VOC2012/SegmentationClass/train_000001.png"] == fa["VOC2012/SegmentationClass/train_000001.png"]


def test_scene_statistics():
    counts = np.zeros(256, np.int64)
    objects = np.zeros(21, np.int64)
    for i in range(120):
        img, label = render_scene(np.random.default_rng([1, 1, i]), 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and label.dtype == np.uint8
        counts += np.bincount(label.ravel(), minlength=256)
        objects[np.unique(label[label < 21])] += 1
    assert (objects[1:] > 0).all(), dict(zip(VOC_CLASSES, objects.tolist()))  # every class occurs
    frac = counts / counts.sum()
    assert 0.5 < frac[0] < 0.85  # background share similar to VOC's (about 70%)
    assert 0.02 < frac[255] < 0.25
    assert counts[21:255].sum() == 0


@pytest.mark.parametrize("width", [3, 4, 5])
def test_void_band_width(width):
    label = np.zeros((6, 20), np.uint8)
    label[:, 10:] = 7  # a vertical boundary between columns 9 and 10
    band = _void_band(label, width)
    cols = np.flatnonzero(band[0])
    assert len(cols) == width and (band == band[0]).all()
    assert cols.min() <= 9 and cols.max() >= 10 and np.all(np.diff(cols) == 1)


def test_existing_output_is_refused_and_nothing_left(tmp_path):
    write_synthetic_voc(tmp_path, train=1, val=1, size=24, progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match="already exists"):
        write_synthetic_voc(tmp_path, train=1, val=1, size=24, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["VOC2012"]
    with pytest.raises(DataError, match="positive number"):
        write_synthetic_voc(tmp_path / "x", train=0, val=0)


def test_builtin_dataset_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNQUANT_CACHE", str(tmp_path / "cache"))
    root = builtin_dataset(train=2, val=1, size=24, progress=False)
    assert root.parent == tmp_path / "cache" and root.name.startswith("synth-voc-v1-")
    assert open_dataset(root, "val").ids == ["val_000000"]
    import fcnquant.data.synth as synth

    def fail(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "write_synthetic_voc", fail)
    assert builtin_dataset(train=2, val=1, size=24, progress=False) == root
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]  # no temp folders left
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters -> another folder
        builtin_dataset(train=3, val=1, size=24, progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]


def test_cli(tmp_path, capsys):
    from fcnquant.cli import synth_voc

    parser = argparse.ArgumentParser()
    synth_voc.register(parser.add_subparsers())
    args = parser.parse_args(["synth-voc", str(tmp_path / "o"), "--train", "2", "--val", "1", "--size", "24",
                              "--seed", "3", "--no-progress"])
    assert args.func(args) == 0
    assert "VOC2012" in capsys.readouterr().out
    assert open_dataset(tmp_path / "o", "train").ids == ["train_000000", "train_000001"]


def test_two_runs_into_one_folder_one_wins_the_other_says_so(tmp_path):
    """Two synth-voc processes started together into one folder: one writes the set, the other fails in one line
    (at the start, or when its finished set finds the winner's in place); no temporary folder is left."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "fcnquant", "synth-voc", str(tmp_path / "v"), "--train", "6", "--val", "2",
           "--size", "32", "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read().strip()) for p in procs)
    (ok, ok_err), (failed, err) = results
    assert (ok, failed) == (0, 2), results
    assert err.startswith("fcnquant synth-voc: error:") and "\n" not in err and "VOC2012" in err, err
    assert ("already exists" in err) or ("written by another run meanwhile" in err), err
    assert [p.name for p in (tmp_path / "v").iterdir()] == ["VOC2012"]
    alone = write_synthetic_voc(tmp_path / "alone", train=6, val=2, size=32, progress=False)
    assert files(tmp_path / "v") == files(alone)  # the winner's set is whole


def test_a_failed_run_leaves_no_folder_it_made(tmp_path, monkeypatch):
    import fcnquant.data.synth as synth

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synth, "_save_mask", full)
    with pytest.raises(OSError):
        write_synthetic_voc(tmp_path / "a" / "b", train=1, val=1, size=16, progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    with pytest.raises(OSError):
        write_synthetic_voc(tmp_path / "kept", train=1, val=1, size=16, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []
