"""evaluate() on tiny ONNX models built here, against a numpy reference computed independently."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fcnquant.data import get_preset, open_dataset  # noqa: E402
from fcnquant.errors import DataError, ModelError  # noqa: E402
from fcnquant.data import DataConfig  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402
from fcnquant.execute import LocalExecutor, RunConfig  # noqa: E402

QUIET = RunConfig(progress=False)

RNG = np.random.default_rng(0)
W = RNG.normal(0, 1, (21, 3, 1, 1)).astype(np.float32)
B = RNG.normal(0, 0.5, 21).astype(np.float32)


def conv_model(path, shape=("n", 3, "h", "w"), stride=1, channels=21):
    """A 1x1 Conv from 3 to ``channels`` logits, optionally strided (lower-resolution output)."""
    w, b = W[:channels], B[:channels]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1], strides=[stride, stride])
    out_shape = [shape[0], channels, None, None]
    graph = helper.make_graph(
        [node], "conv1x1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def reference_scores(data, preset, ids=None, stride=1):
    """Per-class IoU (%, NaN when empty), both mIoUs and pixel accuracy from plain numpy loops over images."""
    ds = open_dataset(data, "val")
    inter, union = np.zeros(21), np.zeros(21)
    correct = total = 0
    for i in ids or ds.ids:
        image, mask = ds.load_pair(i)
        x, m = preset.transform(image, mask)
        x = x[:, ::stride, ::stride]
        logits = np.einsum("oc,chw->ohw", W[:, :, 0, 0].astype(np.float64), x.astype(np.float64)) + B[:, None, None]
        if logits.shape[1:] != m.shape:  # bilinear, align_corners=False, written out per output pixel
            logits = bilinear_loops(logits, m.shape)
        pred = logits.argmax(0)
        valid = m != 255
        correct += int((pred[valid] == m[valid]).sum())
        total += int(valid.sum())
        for c in range(21):
            p, t = (pred == c) & valid, (m == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan) * 100
    return iou, np.nanmean(iou), np.nan_to_num(iou).mean(), 100 * correct / total


def bilinear_loops(x, hw):
    c, h, w = x.shape
    out = np.zeros((c, *hw))
    for oy in range(hw[0]):
        sy = max((oy + 0.5) * h / hw[0] - 0.5, 0)
        y0 = min(int(sy), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for ox in range(hw[1]):
            sx = max((ox + 0.5) * w / hw[1] - 0.5, 0)
            x0 = min(int(sx), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[:, oy, ox] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                              + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
    return out


@pytest.fixture(scope="module")
def data(synthetic_voc):
    return synthetic_voc(train=1, val=5, size=32, seed=11)


def check(result, ref):
    iou, miou, miou_awesome, acc = ref
    got = np.array(list(result.per_class_iou.values()))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(iou))
    np.testing.assert_allclose(got[~np.isnan(got)], iou[~np.isnan(iou)], rtol=1e-9)
    assert result.miou == pytest.approx(miou, rel=1e-9)
    assert result.miou_awesome == pytest.approx(miou_awesome, rel=1e-9)
    assert result.pixel_acc == pytest.approx(acc, rel=1e-9)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_dynamic_model_matches_reference(tmp_path, data, batch_size):
    model = conv_model(tmp_path / "m.onnx")
    result = evaluate(model, DataConfig(data, preset="awesome", size=24), QUIET.with_(batch_size=batch_size))
    check(result, reference_scores(data, get_preset("awesome", size=24)))
    assert result.images == 5 and result.images_per_s > 0
    assert result.preset["size"] == [24, 24] and result.preset["name"] == "awesome"
    ds, pre = open_dataset(data, "val"), get_preset("awesome", size=24)
    assert result.confusion.sum() == sum(int((pre.transform(*ds.load_pair(i))[1] != 255).sum()) for i in ds.ids)


def test_shards_merge_to_the_one_process_result(tmp_path, data):
    model = conv_model(tmp_path / "m.onnx")
    cfg = DataConfig(data, preset="mmseg", size=24)
    one = evaluate(model, cfg, QUIET.with_(batch_size=2))
    three = evaluate(model, cfg, RunConfig(LocalExecutor(shards=3, progress=False), batch_size=2))
    np.testing.assert_array_equal(one.confusion, three.confusion)
    check(three, reference_scores(data, get_preset("mmseg", size=24)))


def test_fixed_shape_model_sets_preset_size_and_batch_fallback(tmp_path, data):
    model = conv_model(tmp_path / "fixed.onnx", shape=(1, 3, 16, 16))
    result = evaluate(model, data, QUIET.with_(batch_size=4))  # fixed batch 1: runs per image
    assert result.preset["size"] == [16, 16]
    check(result, reference_scores(data, get_preset("awesome", size=16)))


def test_fixed_batch_larger_than_one_is_padded(tmp_path, data):
    model = conv_model(tmp_path / "b2.onnx", shape=(2, 3, "h", "w"))
    result = evaluate(model, DataConfig(data, preset="mmseg", size=20), QUIET)
    check(result, reference_scores(data, get_preset("mmseg", size=20)))


def test_low_resolution_logits_are_resized(tmp_path, data):
    model = conv_model(tmp_path / "s2.onnx", stride=2)
    result = evaluate(model, DataConfig(data, preset="mmseg", size=24, num_images=3), QUIET)
    ids = open_dataset(data, "val").ids[:3]
    check(result, reference_scores(data, get_preset("mmseg", size=24), ids=ids, stride=2))


def test_keep_ratio_scores_at_original_label_size(tmp_path, data):
    model = conv_model(tmp_path / "m.onnx")
    preset = get_preset("mmseg-keep-ratio", size=(24, 96))  # 32x32 -> 24x24 input, scored at 32x32
    result = evaluate(model, DataConfig(data, preset=preset), QUIET.with_(batch_size=3))
    check(result, reference_scores(data, preset))
    assert result.confusion.sum() == sum(
        int((open_dataset(data, "val").load_mask(i) != 255).sum()) for i in open_dataset(data, "val").ids)


def test_ids_json_and_table(tmp_path, data):
    model = conv_model(tmp_path / "m.onnx")
    ids = ["val_000003", "val_000001"]
    result = evaluate(model, DataConfig(open_dataset(data, "val"), preset="awesome", size=32, ids=ids), QUIET)
    check(result, reference_scores(data, get_preset("awesome", size=32), ids=ids))
    result.to_json(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["images"] == 2 and d["miou"] == pytest.approx(result.miou, abs=1e-4)
    assert all(v is None or isinstance(v, float) for v in d["per_class_iou"].values())
    assert any(v is None for v in d["per_class_iou"].values()) == any(
        math.isnan(v) for v in result.per_class_iou.values())
    table = result.format_table()
    assert "tvmonitor" in table and "mIoU (mmseg" in table and "mIoU (awesome: empty classes count 0)" in table


def test_errors(tmp_path, data):
    with pytest.raises(ModelError, match="logits"):
        evaluate(conv_model(tmp_path / "c5.onnx", channels=5), DataConfig(data, size=16), QUIET)
    with pytest.raises(ModelError, match="not found"):
        evaluate(tmp_path / "none.onnx", data, QUIET)
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(DataError, match="needs segmentation masks"):
        evaluate(conv_model(tmp_path / "m.onnx"), tmp_path / "imgs", QUIET)
    with pytest.raises(DataError, match="not in dataset"):
        evaluate(tmp_path / "m.onnx", DataConfig(data, ids=["nope"]), QUIET)


def test_cli(tmp_path, data, capsys):
    from fcnquant.cli import eval as eval_cli

    model = conv_model(tmp_path / "m.onnx")
    (tmp_path / "ids.txt").write_text("val_000000\nval_000002\n")
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval", str(model), "--data", str(data), "--size", "24", "--ids",
                              str(tmp_path / "ids.txt"), "--batch-size", "2", "--json", str(tmp_path / "o.json"),
                              "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "background" in out and "pixel accuracy" in out
    d = json.loads((tmp_path / "o.json").read_text())
    ref = reference_scores(data, get_preset("awesome", size=24), ids=["val_000000", "val_000002"])
    assert d["images"] == 2 and d["miou"] == pytest.approx(ref[1], abs=1e-4)
    args = parser.parse_args(["eval", str(model), "--data", str(data), "--mean", "0,0,0", "--std", "1,1,1",
                              "--size", "16x20", "--preset", "mmseg", "--no-progress"])
    assert args.func(args) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", str(model), "--mean", "1,2"])


def test_output_to_classes_accepts_class_ids_and_logits():
    from fcnquant.evaluate import output_to_classes

    ids = np.array([[[0, 3], [20, 1]]], np.int64)
    np.testing.assert_array_equal(output_to_classes(ids, (2, 2)), ids)
    np.testing.assert_array_equal(output_to_classes(ids[:, None], (2, 2)), ids)
    with pytest.raises(ModelError, match="class ids of size"):
        output_to_classes(ids, (4, 4))
    logits = np.zeros((1, 21, 1, 2), np.float32)
    logits[0, 4, 0, 0], logits[0, 9, 0, 1] = 1.0, 2.0
    # upsampled to 1x4 (align_corners=False): columns 0-1 follow pixel 0, columns 2-3 pixel 1
    np.testing.assert_array_equal(output_to_classes(logits, (1, 4)), [[[4, 4, 9, 9]]])
