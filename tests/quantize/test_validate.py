"""Bad tables are refused before anything is written; a table for another target is re-derived from its ranges."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from fcnquant.quantize import QuantConfig
from fcnquant.errors import CalibrationError
from fcnquant.quantize import quantize_model
from tests.quantize.helpers import images, initializer, make_table, ref_qparams, save_model, tiny_fcn, with_entry

X_SHAPE = (1, 3, 16, 16)


@pytest.fixture()
def setup(tmp_path):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    table = make_table(src, images(X_SHAPE), "ort-cpu")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return src, table, out_dir


def refused(src, table, out_dir, match: str, **kwargs) -> None:
    out = out_dir / "fcn.int8.onnx"
    with pytest.raises(CalibrationError, match=match):
        quantize_model(src, table, out, QuantConfig(**kwargs))
    assert list(out_dir.iterdir()) == []  # no model, no temp file, no cache


def test_missing_tensor(setup):
    src, table, out_dir = setup
    del table.tensors["skip"]
    refused(src, table, out_dir, r"lacks 1 activation.*'skip'")


@pytest.mark.parametrize("field,value", [("scale", float("nan")), ("scale", 0.0), ("scale", float("inf")),
                                         ("lo", float("nan")), ("hi", float("inf"))])
def test_nonfinite_or_zero_scale(setup, field, value):
    src, table, out_dir = setup
    with_entry(table, "r1", **{field: value})
    refused(src, table, out_dir, r"unusable entries: 'r1'")


def test_table_for_another_model(setup):
    src, table, out_dir = setup
    table.model_sha256 = "0" * 64
    refused(src, table, out_dir, r"made for another model")


def test_zero_point_outside_type(setup):
    src, table, out_dir = setup
    with_entry(table, "fuse", zero_point=300)
    refused(src, table, out_dir, r"'fuse' \(zero point 300")


def test_symmetric_target_needs_zero_point_0(setup):
    src, table, out_dir = setup
    table.target = "tensorrt"
    for name, e in table.tensors.items():
        scale, zp = ref_qparams(e.lo, e.hi, "tensorrt")
        with_entry(table, name, scale=scale, zero_point=zp)
    with_entry(table, "x", zero_point=3)
    refused(src, table, out_dir, r"'x' \(zero point 3; tensorrt needs 0", target="tensorrt")


def test_pow2_target_needs_pow2_scales(setup):
    src, table, out_dir = setup
    table.target = "npu-pow2"
    for name, e in table.tensors.items():
        scale, zp = ref_qparams(e.lo, e.hi, "npu-pow2")
        with_entry(table, name, scale=scale, zero_point=zp)
    with_entry(table, "r2", scale=table.tensors["r2"].scale * 1.5)
    refused(src, table, out_dir, r"'r2' \(scale .* not a power of two", target="npu-pow2")


def test_relu_output_must_start_at_zero_for_ort_cpu(setup):
    src, table, out_dir = setup
    with_entry(table, "r1", zero_point=5)
    refused(src, table, out_dir, r"Relu outputs must have zero point 0.*'r1'")


def test_missing_table_file(setup):
    src, _, out_dir = setup
    refused(src, out_dir.parent / "nope.json", out_dir, r"not found")


def test_table_for_another_target_is_rederived(setup):
    """A table calibrated for ort-cpu quantized for npu-pow2: scales come from its ranges by the pow2 rule."""
    src, table, out_dir = setup
    out = out_dir / "fcn.pow2.onnx"
    quantize_model(src, table, out, QuantConfig(target="npu-pow2"))
    q = onnx.load(str(out))
    for name in ("x", "r1", "skip", "fuse"):
        (qn,) = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name]
        e = table.tensors[name]
        scale, zp = ref_qparams(e.lo, e.hi, "npu-pow2")
        assert math.isclose(float(initializer(q, qn.input[1])), scale, rel_tol=0) and zp == 0
        assert initializer(q, qn.input[2]).dtype == np.int8
