"""The compare report's gallery: streaming top-K, panels that decode to the exact class maps, one-file HTML."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnquant.compare import CompareOptions, CompareReport, compare_models
from fcnquant.compare.gallery import BROKEN, FIXED, OTHER, GalleryCollector, changed_map, render_gallery
from fcnquant.compare.tensors.pairing import TENSOR_MAP_KEY
from fcnquant.data import DataConfig, get_preset, iter_batches, open_dataset, voc_palette
from fcnquant.errors import DataError
from fcnquant.execute import RunConfig
from fcnquant.runtime import make_session

HW = 32


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _write_pair(folder):
    """x -> Conv 1x1 (21 logits); the "quantized" copy adds a fixed noise to the logits (tensor map included)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((21, 3, 1, 1)).astype(np.float32)
    b = np.linspace(1.0, -1.0, 21).astype(np.float32)
    noise = (rng.standard_normal((1, 21, HW, HW)) * 0.6).astype(np.float32)
    paths = []
    for noisy in (False, True):
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["raw" if noisy else "output"], name="conv")]
        if noisy:
            inits.append(numpy_helper.from_array(noise, "noise"))
            nodes.append(helper.make_node("Add", ["raw", "noise"], ["output"], name="plant"))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HW, HW])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 21, HW, HW])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        if noisy:
            entry = model.metadata_props.add()
            entry.key, entry.value = TENSOR_MAP_KEY, json.dumps({"output": "output"})
        path = folder / ("q.onnx" if noisy else "f.onnx")
        onnx.save(model, str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    voc = synthetic_voc(train=0, val=7, size=40, seed=4)
    return voc, _write_pair(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def report(setup):
    voc, (f, q) = setup
    return compare_models(f, q, voc, RunConfig(progress=False), CompareOptions(gallery=3, isolated=False))


def _reference(voc, models):
    """Independent: preprocessed images/masks, both models' argmax per image (plain sessions)."""
    ds = open_dataset(voc, "val")
    batches = list(iter_batches(ds, get_preset("awesome", model_hw=(HW, HW)), batch_size=1))
    preds = []
    for path in models:
        s = make_session(path)
        preds.append(np.stack([s.run(None, {"x": b.images})[0][0].argmax(0) for b in batches]))
    return ds, np.stack([b.masks[0] for b in batches]), preds


def test_collector_keeps_the_top_k_like_a_full_sort():
    rng = np.random.default_rng(0)
    n, k = 23, 4
    pf = rng.integers(0, 3, (n, 6, 5))
    pq = pf.copy()
    counts = rng.integers(0, 9, n)
    counts[[3, 9, 15]] = 7  # ties: the earlier image ranks first
    for i, c in enumerate(counts):
        flat = pq[i].reshape(-1)
        flat[:c] = (flat[:c] + 1) % 3
    col = GalleryCollector(k)
    for start in range(0, n, 3):  # batches of 3
        col.update([f"im{i}" for i in range(start, min(n, start + 3))], pf[start:start + 3], pq[start:start + 3])
        assert len(col.best()) <= k  # never more than k kept
    order = sorted((i for i in range(n) if counts[i] > 0), key=lambda i: (-counts[i], i))[:k]
    best = col.best()
    assert [b[0] for b in best] == [f"im{i}" for i in order]
    assert [b[1] for b in best] == [int(counts[i]) for i in order]
    for (image_id, _, f, q) in best:
        i = int(image_id[2:])
        np.testing.assert_array_equal(f, pf[i])
        np.testing.assert_array_equal(q, pq[i])
    assert GalleryCollector(0).best() == []
    none = GalleryCollector(3)
    none.update(["a"], pf[:1], pf[:1])  # nothing changed: not a candidate
    assert none.best() == []


def test_changed_map_colours_by_hand():
    image = np.full((1, 4, 3), 100, np.uint8)
    labels = np.array([[1, 2, 255, 0]], np.uint8)
    pf = np.array([[1, 0, 3, 0]])
    pq = np.array([[0, 2, 4, 0]])  # float right / quantized right / void / unchanged
    out = changed_map(image, pf, pq, labels)
    assert tuple(out[0, 0]) == BROKEN and tuple(out[0, 1]) == FIXED and tuple(out[0, 2]) == OTHER
    assert out[0, 3, 0] == out[0, 3, 1] == out[0, 3, 2]  # unchanged: grey
    assert tuple(changed_map(image, pf, pq)[0, 0]) == OTHER  # without labels every change is "other"


def test_gallery_lists_the_most_changed_images_with_exact_panels(report, setup):
    voc, models = setup
    ds, masks, (pf, pq) = _reference(voc, models)
    changed = (pf != pq).reshape(len(pf), -1).sum(1)
    order = sorted(range(len(pf)), key=lambda i: (-changed[i], i))[:3]
    assert changed[order[-1]] > 0
    g = report.gallery
    assert [x.image_id for x in g] == [ds.ids[i] for i in order]
    assert [x.changed for x in g] == [int(changed[i]) for i in order] and all(x.pixels == HW * HW for x in g)
    for x, i in zip(g, order):
        titles = [t for t, _ in x.panels]
        assert titles == ["input", "ground truth", "float", "quantized", "changed pixels"]
        panels = dict(x.panels)
        np.testing.assert_array_equal(np.asarray(_decode(panels["float"])), pf[i])  # palette index = class
        np.testing.assert_array_equal(np.asarray(_decode(panels["quantized"])), pq[i])
        np.testing.assert_array_equal(np.asarray(_decode(panels["ground truth"])), masks[i])
        assert np.array_equal(np.asarray(_decode(panels["float"]).getpalette()[:63]),
                              voc_palette()[:21].ravel())
        # input as the model saw it: 40x40 resized to 32x32 (short side), independent of the preset code
        raw = Image.open(ds.image_path(x.image_id)).convert("RGB").resize((HW, HW), Image.Resampling.BILINEAR)
        diff = np.abs(np.asarray(_decode(panels["input"]).convert("RGB"), int) - np.asarray(raw, int))
        assert diff.max() <= 1
        cmap = np.asarray(_decode(panels["changed pixels"]).convert("RGB"))
        ch = pf[i] != pq[i]
        grey = (cmap[..., 0] == cmap[..., 1]) & (cmap[..., 1] == cmap[..., 2])
        assert not grey[ch].any() and grey[~ch].all()
        valid = masks[i] != 255
        assert (cmap[ch & valid & (pf[i] == masks[i])] == BROKEN).all()
        want_acc = 100 * ((pf[i] == masks[i]) & valid).sum() / valid.sum()
        assert x.acc_float == pytest.approx(want_acc)
        assert set(x.classes) == set(np.unique(np.concatenate([pf[i].ravel(), pq[i].ravel(),
                                                               masks[i][valid].ravel()])).tolist())


def test_report_stays_one_file_and_json_omits_pictures(report, setup, tmp_path):
    path = tmp_path / "r.html"
    report.to_html(path)
    text = path.read_text(encoding="utf-8")
    assert text.count("src='data:image/png;base64,") == 3 * 5
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert "images with the most changed pixels" in text and list(tmp_path.iterdir()) == [path]
    d = report.to_dict()
    assert [x["image_id"] for x in d["gallery"]] == [x.image_id for x in report.gallery]
    assert "panels" not in json.dumps(d["gallery"])
    back = CompareReport.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d and all(not x.panels for x in back.gallery)


def test_gallery_zero_turns_it_off(setup):
    voc, (f, q) = setup
    rep = compare_models(f, q, DataConfig(voc, num_images=2), RunConfig(progress=False),
                         CompareOptions(gallery=0, isolated=False))
    assert rep.gallery == () and "most changed pixels" not in _html(rep)
    with pytest.raises(DataError, match="gallery"):
        compare_models(f, q, voc, RunConfig(progress=False), CompareOptions(gallery=-1))


def _html(rep) -> str:
    from fcnquant.compare.report.html import render_html

    return render_html(rep)


def test_large_images_are_drawn_smaller_without_losing_a_changed_pixel(tmp_path):
    """Original-size scoring (mmseg-keep-ratio): a 700x520 image, one changed pixel, drawn at most 320 px wide."""
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (520, 700, 3), dtype=np.uint8)).save(root / "JPEGImages" / "a.jpg")
    mask = np.zeros((520, 700), np.uint8)
    mask[100:300, 200:500] = 15
    Image.fromarray(mask).save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    ds = open_dataset(tmp_path, "val")
    pf = mask.astype(np.int64)[None]
    pq = pf.copy()
    pq[0, 150, 333] = 0  # float right, quantized wrong
    col = GalleryCollector(2)
    col.update(["a"], pf, pq)
    (item,) = render_gallery(col, ds, get_preset("mmseg-keep-ratio"))
    panels = dict(item.panels)
    assert item.changed == 1 and item.pixels == 520 * 700
    cmap = np.asarray(_decode(panels["changed pixels"]).convert("RGB"), int)
    assert cmap.shape[1] == 320 and cmap.shape[0] in (237, 238)
    assert np.abs(cmap - np.asarray(BROKEN)).sum(axis=2).min() <= 30  # the lone pixel is still visibly red
    assert _decode(panels["ground truth"]).size == (320, cmap.shape[0])


def test_unlabelled_images_get_a_placeholder_ground_truth(tmp_path):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (HW, HW, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    ds = open_dataset(tmp_path, None)  # a plain image folder: no masks
    pf = np.zeros((1, HW, HW), np.int64)
    pq = pf.copy()
    pq[0, :2, :3] = 4
    col = GalleryCollector(1)
    col.update(ds.ids, pf, pq)
    (item,) = render_gallery(col, ds, get_preset("awesome", model_hw=(HW, HW)))
    assert dict(item.panels)["ground truth"] == "" and item.acc_float is None and item.changed == 6
    cmap = np.asarray(_decode(dict(item.panels)["changed pixels"]).convert("RGB"))
    assert (cmap[:2, :3] == OTHER).all()
    from fcnquant.compare.report.html import gallery_section

    html = gallery_section([item], [f"c{k}" for k in range(21)], 1)
    assert html.count("no labels") == 1 and html.count("data:image/png;base64,") == 4


def test_collectors_of_consecutive_slices_merge_into_the_whole_lists():
    rng = np.random.default_rng(5)
    n, k = 17, 5
    pf = rng.integers(0, 3, (n, 4, 4))
    pq = pf.copy()
    counts = rng.integers(0, 6, n)
    counts[[1, 8, 12]] = 6  # ties across slices: the earlier image of the whole list ranks first
    for i, c in enumerate(counts):
        flat = pq[i].reshape(-1)
        flat[:c] = (flat[:c] + 1) % 3
    ids = [f"im{i}" for i in range(n)]
    whole = GalleryCollector(k)
    whole.update(ids, pf, pq)
    merged = GalleryCollector(k)
    for lo, hi in ((0, 6), (6, 11), (11, 17)):
        part = GalleryCollector(k, start=lo)
        part.update(ids[lo:hi], pf[lo:hi], pq[lo:hi])
        merged.merge(part)
    order = sorted((i for i in range(n) if counts[i] > 0), key=lambda i: (-counts[i], i))[:k]
    assert [b[0] for b in merged.best()] == [f"im{i}" for i in order] == [b[0] for b in whole.best()]
    assert GalleryCollector(0).merge(whole).best() == []
