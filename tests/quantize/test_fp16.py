"""fp16 conversion: runs in onnxruntime CPU, clamps out-of-range weights with a warning, io and block options."""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fcnquant.quantize import convert_fp16
from tests.quantize.helpers import images, initializer, run, save_model, tiny_fcn

X_SHAPE = (1, 3, 16, 16)


def test_fp16_runs_and_matches_fp32(tmp_path):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    out = tmp_path / "fcn.fp16.onnx"
    res = convert_fp16(src, out)
    m16 = onnx.load(str(out))
    onnx.checker.check_model(m16, full_check=True)
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert initializer(m16, "w1").dtype == np.float16
    assert res.clamped == {} and res.size_bytes == out.stat().st_size
    x = images(X_SHAPE, n=1)[0]
    y16 = run(out, x.astype(np.float16))
    y32 = run(src, x)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.astype(np.float32), y32, atol=2e-2 * np.abs(y32).max())
    assert (y16.argmax(1) == y32.argmax(1)).mean() > 0.98


def test_clamps_out_of_range_initializer_with_warning(tmp_path, caplog):
    model = tiny_fcn()
    w = initializer(model, "w2").copy()
    w[0, 0, 0, 0] = 1e6
    w[1, 0, 0, 0] = -2e5
    for i, t in enumerate(model.graph.initializer):
        if t.name == "w2":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, "w2"))
    src = save_model(model, tmp_path / "big.onnx")
    out = tmp_path / "big.fp16.onnx"
    with caplog.at_level(logging.WARNING, logger="fcnquant.quantize.fp16"):
        res = convert_fp16(src, out)
    assert res.clamped == {"w2": 1e6}
    assert any("w2" in r.getMessage() and "clamped" in r.getMessage() for r in caplog.records)
    w16 = initializer(onnx.load(str(out)), "w2")
    assert w16[0, 0, 0, 0] == np.float16(65504) and w16[1, 0, 0, 0] == np.float16(-65504)
    np.testing.assert_array_equal(w16[2:], w[2:].astype(np.float16))  # the rest untouched
    # it loads and runs (activations through a 65504 weight may well overflow float16; that is the model's problem)
    assert run(out, images(X_SHAPE, n=1)[0].astype(np.float16)).shape == (1, 4, 16, 16)


def test_keep_io_fp32_and_block_op(tmp_path):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    out = tmp_path / "fcn.fp16.onnx"
    res = convert_fp16(src, out, keep_io_fp32=True, block_ops=["Resize"])
    m16 = onnx.load(str(out))
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert res.blocked_ops == ("Resize",)
    made_by = {o: n for n in m16.graph.node for o in n.output}
    for n in m16.graph.node:
        if n.op_type == "Resize":  # its data input is cast back to float32
            cast = made_by[n.input[0]]
            assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
        if n.op_type == "Conv":
            assert initializer(m16, n.input[1]).dtype == np.float16
    x = images(X_SHAPE, n=1)[0]
    y = run(out, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, run(src, x), atol=2e-2 * np.abs(y).max())
