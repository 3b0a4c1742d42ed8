"""The int8 model's output against a numpy fake-quant reference on a tiny conv net; bias and weight numerics."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fcnquant.quantize import quantize_model
from tests.quantize.helpers import dq_params, images, initializer, make_table, node, run, save_model, tiny_convnet


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Plain NCHW convolution (stride 1) in float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + oh, j:j + ow], w[:, :, i, j].astype(np.float64))
    return out + b.reshape(1, -1, 1, 1)


def fake_quant(v: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    q = np.clip(np.rint(np.float32(v) / np.float32(scale)) + zp, qmin, qmax)
    return ((q - zp) * np.float32(scale)).astype(np.float32)


def weight_fq(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0).astype(np.float32)
    q = np.clip(np.rint(w / scales.reshape(-1, 1, 1, 1)), -127, 127)
    return (q * scales.reshape(-1, 1, 1, 1)).astype(np.float32), scales


def bias_fq(b: np.ndarray, in_scale: float, w_scales: np.ndarray) -> np.ndarray:
    s = (np.float32(in_scale) * w_scales).astype(np.float32)
    return (np.rint(b / s) * s).astype(np.float32)


def reference(model, table, x: np.ndarray, quantize_output: bool) -> tuple[np.ndarray, float]:
    """Returns the fake-quant output of tiny_convnet and the output change one r1 rounding step can cause."""
    e = table.tensors
    w1, s1 = weight_fq(initializer(model, "w1"))
    w2, s2 = weight_fq(initializer(model, "w2"))
    xq = fake_quant(x, e["x"].scale, e["x"].zero_point, 0, 255)
    r1 = np.maximum(conv2d(xq, w1, bias_fq(initializer(model, "b1"), e["x"].scale, s1), 1), 0)
    r1q = fake_quant(r1, e["r1"].scale, e["r1"].zero_point, 0, 255)
    y = conv2d(r1q, w2, bias_fq(initializer(model, "b2"), e["r1"].scale, s2), 0).astype(np.float32)
    if quantize_output:
        y = fake_quant(y, e["y"].scale, e["y"].zero_point, 0, 255)
    step = float(e["r1"].scale * np.abs(w2).sum(axis=(1, 2, 3)).max())
    return y, step


@pytest.mark.parametrize("quantize_output", [False, True])
def test_output_matches_numpy_fake_quant(tmp_path, quantize_output):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    xs = images((1, 2, 6, 6), n=4)
    table = make_table(src, xs, "ort-cpu")
    out = tmp_path / "net.int8.onnx"
    quantize_model(src, table, out, quantize_output=quantize_output)
    model = onnx.load(str(src))
    for x in xs[:2] + images((1, 2, 6, 6), n=2, seed=7):
        ref, step = reference(model, table, x, quantize_output)
        for level in ("none", "all"):
            got = run(out, x, optimization=level)
            diff = np.abs(got - ref)
            # identical arithmetic except float summation order / integer requantisation: an r1 element may land
            # one rounding step away; the output may then move by at most one step of r1 through conv2
            tol = step + (e_out_step(table) if quantize_output else 0.0) + 1e-5
            assert diff.max() <= tol, (level, diff.max(), tol)
            assert np.mean(diff <= 1e-5) > 0.99, level


def e_out_step(table) -> float:
    return float(table.tensors["y"].scale)


def test_bias_is_int32_with_input_times_weight_scale(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    table = make_table(src, images((1, 2, 6, 6)), "ort-cpu")
    out = tmp_path / "net.int8.onnx"
    quantize_model(src, table, out)
    q = onnx.load(str(out))
    model = onnx.load(str(src))
    for conv, in_tensor, w_name, b_name in (("conv1", "x", "w1", "b1"), ("conv2", "r1", "w2", "b2")):
        n = node(q, conv)
        b_scale, b_zp, _, b_q = dq_params(q, n.input[2])
        assert b_q.dtype == np.int32 and not b_zp.any()
        w = initializer(model, w_name)
        w_scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
        expected = np.float32(table.tensors[in_tensor].scale) * w_scale.astype(np.float32)
        np.testing.assert_allclose(b_scale, expected, rtol=1e-6)
        np.testing.assert_array_equal(b_q, np.rint(initializer(model, b_name) / b_scale).astype(np.int32))
        # the weight's own DQ scale is the same per-channel scale
        ws, wz, axis, wq = dq_params(q, n.input[1])
        assert axis == 0 and wq.dtype == np.int8 and not wz.any()
        np.testing.assert_allclose(ws, w_scale, rtol=1e-6)
        np.testing.assert_array_equal(wq, np.rint(w / w_scale.reshape(-1, 1, 1, 1)).astype(np.int8))


def test_per_tensor_weights(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    table = make_table(src, images((1, 2, 6, 6)), "ort-cpu")
    out = tmp_path / "net.int8.onnx"
    quantize_model(src, table, out, per_channel=False)
    q = onnx.load(str(out))
    model = onnx.load(str(src))
    ws, wz, axis, wq = dq_params(q, node(q, "conv1").input[1])
    assert ws.shape == () and wz.shape == ()
    np.testing.assert_allclose(ws, np.abs(initializer(model, "w1")).max() / 127.0, rtol=1e-6)
    b_scale, _, _, _ = dq_params(q, node(q, "conv1").input[2])
    np.testing.assert_allclose(b_scale, np.float32(table.tensors["x"].scale) * ws, rtol=1e-6)
