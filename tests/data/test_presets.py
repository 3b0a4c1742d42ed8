"""Preprocessing presets against hand-worked resize/crop/normalise results, and preset resolution."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.data import PRESETS, get_preset
from fcnquant.errors import DataError, ModelError

IMNET_MEAN, IMNET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
MM_MEAN, MM_STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def test_awesome_short_side_resize_then_center_crop():
    # 1x2 image; short side 1 -> 2, long side int(2 * 2 / 1) = 4. Bilinear with half-pixel centres gives
    # columns a, .75a+.25b, .25a+.75b, b; crop x1 = round((4 - 2) / 2) = 1 keeps the middle two columns.
    img = np.array([[[0, 40, 255], [200, 120, 255]]], np.uint8)
    mask = np.array([[3, 7]], np.uint8)
    x, m = get_preset("awesome", size=2).transform(img, mask)
    rgb = np.array([[50, 60, 255], [150, 100, 255]], float)  # the two kept columns, per channel
    want = (rgb / 255 - IMNET_MEAN) / IMNET_STD  # (2 columns, 3 channels)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    for row in range(2):
        np.testing.assert_allclose(x[:, row, :], want.T, rtol=0, atol=2e-6)
    # nearest: source column int((x + .5) / 2) -> 0, 0, 1, 1; cropped -> labels 3, 7 on both rows
    np.testing.assert_array_equal(m, [[3, 7], [3, 7]])


def test_awesome_crop_offset_rounds_half_to_even():
    # 2x5 image at size 2: no resize (short side already 2, long int(5*2/2)=5); x1 = round(1.5) = 2
    img = np.zeros((2, 5, 3), np.uint8)
    img[:, :, 0] = np.arange(5) * 50
    x, _ = get_preset("awesome", size=2).transform(img)
    np.testing.assert_allclose(x[0, 0], (np.array([100, 150]) / 255 - 0.485) / 0.229, atol=2e-6)
    # 2x7 image: x1 = round(2.5) = 2 as well
    img = np.zeros((2, 7, 3), np.uint8)
    img[:, :, 0] = np.arange(7) * 30
    x, _ = get_preset("awesome", size=2).transform(img)
    np.testing.assert_allclose(x[0, 0], (np.array([60, 90]) / 255 - 0.485) / 0.229, atol=2e-6)


def test_awesome_tall_image_and_default_size():
    p = get_preset("awesome")
    assert p.size == (320, 320) and p.mode == "short-crop" and p.pixel_scale == pytest.approx(1 / 255)
    img = np.zeros((500, 375, 3), np.uint8)
    x, _ = p.transform(img, np.zeros((500, 375), np.uint8))
    assert x.shape == (3, 320, 320)


def test_mmseg_fixed_resize_and_normalise():
    # 2x2 -> 4x4: separable bilinear, each axis a, .75a+.25b, .25a+.75b, b (values chosen to stay integral)
    ch = np.array([[0, 160], [64, 240]], float)
    img = np.stack([ch, ch, ch], 2).astype(np.uint8)
    mask = np.array([[1, 2], [3, 4]], np.uint8)
    p = get_preset("mmseg", size=4)
    x, m = p.transform(img, mask)
    wts = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    up = wts @ ch @ wts.T
    # by hand: rows become [0, 40, 120, 160] and [64, 108, 196, 240]; row 1 = .75 * first + .25 * second
    assert up[1, 1] == 57 and up[2, 3] == 220 and up[3, 2] == 196
    for c in range(3):
        np.testing.assert_allclose(x[c], (up - MM_MEAN[c]) / MM_STD[c], atol=1e-5)
    np.testing.assert_array_equal(m, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert PRESETS["mmseg"].size == (512, 512) and PRESETS["mmseg"].pixel_scale == 1.0


def test_mmseg_keep_ratio_sizes_and_original_mask():
    p = get_preset("mmseg-keep-ratio")
    assert p.size == (512, 2048) and p.score_original and p.variable_size
    # factor min(2048 / long, 512 / short); size int(v * f + 0.5)
    assert p.output_hw(375, 500) == (512, 683)      # f = 512/375 -> 682.67 + .5 -> 683
    assert p.output_hw(100, 1000) == (205, 2048)    # f = min(2.048, 5.12) = 2.048 -> 204.8 -> 205
    assert p.output_hw(512, 512) == (512, 512)
    small = get_preset("mmseg-keep-ratio", size=(4, 6))
    img = np.zeros((2, 4, 3), np.uint8)
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4)
    x, m = small.transform(img, mask)  # f = min(6/4, 4/2) = 1.5 -> 3x6
    assert x.shape == (3, 3, 6)
    np.testing.assert_array_equal(m, mask)  # scored at the original size
    np.testing.assert_allclose(x[:, 0, 0], -MM_MEAN / MM_STD, atol=1e-6)


def test_custom_mean_std_and_size_forms():
    p = get_preset("awesome", size=(2, 3), mean=(0, 0, 0), std=(1, 1, 1))
    img = np.full((4, 6, 3), 51, np.uint8)
    x, _ = p.transform(img)
    assert x.shape == (3, 2, 3)
    np.testing.assert_allclose(x, 0.2, atol=1e-6)
    assert get_preset("mmseg-keep-ratio", size=256).size == (256, 1024)
    assert get_preset(None).name == "awesome"
    with pytest.raises(DataError, match="unknown preset"):
        get_preset("caffe")
    with pytest.raises(DataError, match="std must be positive"):
        get_preset("mmseg", std=(1, 0, 1))


def test_size_follows_fixed_model_input():
    assert get_preset("awesome", model_hw=(160, 160)).size == (160, 160)
    assert get_preset("mmseg", model_hw=(96, 128)).size == (96, 128)
    assert get_preset("awesome", size=160, model_hw=(160, 160)).size == (160, 160)
    with pytest.raises(ModelError, match="does not fit"):
        get_preset("awesome", size=320, model_hw=(160, 160))
    with pytest.raises(ModelError, match="fixed 160x160"):
        get_preset("mmseg-keep-ratio", model_hw=(160, 160))
    custom = get_preset("awesome", size=200)
    with pytest.raises(ModelError, match="does not fit"):
        get_preset(custom, model_hw=(160, 160))
    assert get_preset(PRESETS["awesome"], model_hw=(64, 64)).size == (64, 64)


def test_preset_for_session_reads_metadata_and_fixed_shape():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from fcnquant.data import preset_for_session
    from fcnquant.runtime import make_session

    def model(shape, meta=None):
        node = helper.make_node("Identity", ["x"], ["y"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        if meta:
            helper.set_model_props(m, meta)
        return make_session(m.SerializeToString())

    assert preset_for_session(model([1, 3, 24, 32])).size == (24, 32)
    p = preset_for_session(model(["n", 3, "h", "w"], {"fcnquant.preset": "mmseg"}))
    assert p.name == "mmseg" and p.size == (512, 512)
    assert preset_for_session(model(["n", 3, "h", "w"]), "mmseg-keep-ratio").mode == "keep-ratio"
    assert onnx is not None
