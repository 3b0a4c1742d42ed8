"""compare_models end to end on tiny models with planted errors, against numpy and fcnquant.evaluate."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest

from fcnquant.compare import CompareOptions, CompareReport, compare_models
from fcnquant.data import DataConfig, get_preset, iter_batches, open_dataset
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig
from fcnquant.runtime import make_session
from tests.compare.helpers import HW, boundary_band_brute_force, planted_params, write_planted_models

QUIET = RunConfig(progress=False)


@pytest.fixture(scope="module")
def voc(synthetic_voc):
    return synthetic_voc(train=0, val=3, size=40, seed=3)


@pytest.fixture(scope="module")
def report(voc, models):
    return compare_models(models[0], models[1], voc, QUIET)


def _images_and_masks(voc):
    ds = open_dataset(voc, "val")
    batches = list(iter_batches(ds, get_preset("awesome", model_hw=(HW, HW)), batch_size=1))
    return np.concatenate([b.images for b in batches]), np.concatenate([b.masks for b in batches])


def test_planted_layer_ranks_worst_with_its_planted_snr(report, voc):
    w1, b1, w2, b2, noise = planted_params()
    images, _ = _images_and_masks(voc)
    a = np.einsum("oc,nchw->nohw", w1.astype(np.float64), images.astype(np.float64)) + b1[None, :, None, None]
    planted = 10 * math.log10(np.sum(a**2) / (images.shape[0] * np.sum(noise.astype(np.float64) ** 2)))
    assert [layer.float_name for layer in report.layers] == ["a", "output"]
    worst = report.worst(1)[0]
    assert worst.float_name == "a"
    assert worst.accumulated.snr_db == pytest.approx(planted, abs=1e-3)
    assert worst.isolated.snr_db == pytest.approx(planted, abs=1e-3)  # a's inputs are the image either way
    assert worst.accumulated.max_abs == pytest.approx(float(np.abs(noise).max()), rel=1e-5)
    assert worst.accumulated.mse == pytest.approx(float(np.mean(noise.astype(np.float64) ** 2)), rel=1e-5)
    assert worst.accumulated.count == a.size


def test_isolated_removes_inherited_error(report, voc):
    """The error planted in layer a reaches layer 2's accumulated drift but not its isolated drift."""
    w1, b1, w2, b2, noise = planted_params()
    images, _ = _images_and_masks(voc)
    out = report.layers[1]
    assert out.float_name == "output"
    assert out.isolated.snr_db == math.inf and out.isolated.max_abs == 0.0
    a = np.einsum("oc,nchw->nohw", w1.astype(np.float64), images.astype(np.float64)) + b1[None, :, None, None]
    logits = np.einsum("oc,nchw->nohw", w2.astype(np.float64), a) + b2[None, :, None, None]
    err = np.einsum("oc,nchw->nohw", w2.astype(np.float64), noise.astype(np.float64))  # the same for every image
    want = 10 * math.log10(np.sum(logits**2) / (images.shape[0] * np.sum(err**2)))
    assert out.accumulated.snr_db == pytest.approx(want, abs=1e-3)


def test_final_metrics_equal_evaluate_and_numpy(report, voc, models):
    ev_f = evaluate(models[0], voc, QUIET)
    ev_q = evaluate(models[1], voc, QUIET)
    f = report.final
    assert f.labelled and f.miou_float > 0 and f.miou_quant != f.miou_float  # a non-trivial comparison
    assert f.miou_float == ev_f.miou and f.miou_quant == ev_q.miou
    assert f.miou_awesome_float == ev_f.miou_awesome and f.miou_awesome_quant == ev_q.miou_awesome
    assert report.miou_drop == ev_f.miou - ev_q.miou
    want = [ev_q.per_class_iou[c] - ev_f.per_class_iou[c] for c in f.class_names]
    np.testing.assert_array_equal(np.array(f.iou_delta), np.array(want))
    # changed pixels: independent sessions, argmax, brute-force boundary band on the labels
    images, masks = _images_and_masks(voc)
    preds = []
    for path in models:
        s = make_session(path)
        preds.append(np.concatenate([s.run(None, {"x": images[k:k + 1]})[0].argmax(1) for k in range(len(images))]))
    changed = preds[0] != preds[1]
    band = np.stack([boundary_band_brute_force(m, 3) for m in masks])
    assert f.pixels == changed.size and f.changed == int(changed.sum()) and f.changed > 0
    assert f.boundary_pixels == int(band.sum()) and f.boundary_changed == int((changed & band).sum())
    assert f.changed_share == pytest.approx(changed.mean())


def test_json_roundtrip_and_strict_json(report, tmp_path):
    path = tmp_path / "r.json"
    report.to_json(path)

    def no_constants(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    d = json.loads(path.read_text(), parse_constant=no_constants)
    assert d["format_version"] == 1 and d["layers"][1]["isolated"]["snr_db"] is None  # +inf written as null
    back = CompareReport.from_dict(d)
    assert back.to_dict() == report.to_dict()
    assert back.layers[1].isolated.snr_db == math.inf


def test_html_is_self_contained(report, tmp_path):
    path = tmp_path / "r.html"
    report.to_html(path)
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert text.count("<svg") >= 2  # SNR along depth and the per-class IoU deltas
    assert "a" in text and "output" in text and list(tmp_path.iterdir()) == [path]


def test_table_lists_worst_layers_first(report):
    text = report.format_table(top=1)
    assert "worst 1 of 2 layers" in text
    lines = text.splitlines()
    row = next(line for line in lines if line.strip().startswith("1 "))
    assert " a " in row and "output" not in row
    assert "mIoU float" in text and "within 3 px" in text


def test_table_and_stats_add_clip_ranges_and_histograms(voc, models, tmp_path):
    from fcnquant._io import file_sha256
    from fcnquant.calibrate.stats import CalibrationStats
    from fcnquant.calibrate.table import CalibrationTable, TensorEntry

    w1, b1, *_ = planted_params()
    images, _ = _images_and_masks(voc)
    a = (np.einsum("oc,nchw->nohw", w1, images) + b1[None, :, None, None]).astype(np.float32)
    sha = file_sha256(models[0])
    table = CalibrationTable(model_sha256=sha, method="minmax", target="ort-cpu", tensors={
        "a": TensorEntry(float(a.min()), float(a.max()), -2.0, 2.0, 2.0 / 127, 0)})
    table.save(tmp_path / "t.json")
    stats = CalibrationStats.new(["a"], model_sha256=sha)
    stats.tensors["a"].update(a)
    stats.save(tmp_path / "s.npz")

    with_table = compare_models(models[0], models[1], voc, QUIET, CompareOptions(isolated=False),
                                table=tmp_path / "t.json")
    layer = with_table.layers[0]
    assert layer.clip == (-2.0, 2.0) and with_table.layers[1].clip is None
    assert layer.isolated is None and not with_table.isolated
    (h,) = with_table.histograms
    assert h.tensor == "a" and h.source == "compare" and (h.lo, h.hi) == (-2.0, 2.0)
    assert h.min == pytest.approx(float(a.min())) and h.max == pytest.approx(float(a.max()))
    assert sum(h.counts) == a.size  # small tensors are binned in full

    with_stats = compare_models(models[0], models[1], voc, QUIET, table=tmp_path / "t.json",
                                stats=tmp_path / "s.npz")
    (h,) = with_stats.histograms
    assert h.source == "stats" and sum(h.counts) == a.size and (h.lo, h.hi) == (-2.0, 2.0)
    counts, _ = np.histogram(a.astype(np.float64), bins=np.array(h.edges))
    assert np.abs(np.array(h.counts) - counts).sum() <= 0.02 * a.size  # bit-pattern bins, re-binned linearly
    html = tmp_path / "h.html"
    with_stats.to_html(html)
    assert 'aria-label="histogram of a"' in html.read_text()


def test_three_shards_give_the_report_of_one(voc, models, tmp_path):
    """Final counters, gallery (ties by position in the whole list), drift sums and histograms merge exactly."""
    from fcnquant._io import file_sha256
    from fcnquant.calibrate.table import CalibrationTable, TensorEntry
    from fcnquant.execute import LocalExecutor

    CalibrationTable(model_sha256=file_sha256(models[0]), method="minmax", target="ort-cpu", tensors={
        "a": TensorEntry(-3.0, 3.0, -2.0, 2.0, 2.0 / 127, 0)}).save(tmp_path / "t.json")
    options = CompareOptions(gallery=2)
    reports = [compare_models(models[0], models[1], voc, LocalExecutor(shards=n, progress=False), options,
                              table=tmp_path / "t.json") for n in (1, 3)]
    one, three = (r.to_dict() for r in reports)
    one.pop("seconds"), three.pop("seconds")
    assert one == three
    assert one["images"] == 3 and one["drift_images"] == 3 and len(one["gallery"]) == 2 and one["histograms"]
    assert [g.panels for g in reports[0].gallery] == [g.panels for g in reports[1].gallery]


def test_unlabelled_images_give_drift_and_changed_share_only(voc, models, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for jpg in sorted((voc / "VOC2012" / "JPEGImages").glob("*.jpg")):
        shutil.copy(jpg, folder / jpg.name)
    r = compare_models(models[0], models[1], DataConfig(folder, split=None), QUIET)
    assert not r.final.labelled and math.isnan(r.final.miou_float) and math.isnan(r.miou_drop)
    assert r.final.pixels == 3 * HW * HW and 0 < r.final.changed_share < 1
    assert r.layers[0].accumulated.count > 0
    assert "no labels" in r.format_table()


def test_batches_and_fixed_batch_padding_give_the_same_report(voc, tmp_path):
    dyn = write_planted_models(tmp_path, batch="N")
    one = compare_models(dyn[0], dyn[1], voc, RunConfig(batch_size=1, progress=False))
    two = compare_models(dyn[0], dyn[1], voc, RunConfig(batch_size=2, progress=False))  # batches of 2 and 1
    assert one.final.to_dict() == two.final.to_dict()
    for x, y in zip(one.layers, two.layers):
        assert x.accumulated.count == y.accumulated.count
        assert x.accumulated.snr_db == pytest.approx(y.accumulated.snr_db, abs=1e-9)


def test_fp16_model_with_fp16_io(voc, models, tmp_path):
    from onnxruntime.transformers import float16

    path = tmp_path / "h.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(models[0])), keep_io_types=False), str(path))
    r = compare_models(models[0], path, voc, QUIET)
    assert [layer.float_name for layer in r.layers] == ["x", "a", "output"]
    images, _ = _images_and_masks(voc)
    x64 = images.astype(np.float64)
    want = 10 * math.log10(np.sum(x64**2) / np.sum((images.astype(np.float16).astype(np.float64) - x64) ** 2))
    assert r.layers[0].accumulated.snr_db == pytest.approx(want, abs=1e-9)  # the input's own float16 rounding
    assert r.layers[0].isolated.snr_db == pytest.approx(want, abs=1e-9)
