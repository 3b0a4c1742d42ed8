"""The legality check on hand-built QDQ graphs: one graph per finding kind, and what must not be flagged."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.check import check_model
from fcnquant.targets import TARGETS

NPU = TARGETS["npu-pow2"]


class Graph:
    """A small QDQ graph under construction (opset 21: int16 quantizers allowed)."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, output, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def qdq(self, x, scale, dtype=np.int8, zp=0, name=None):
        """x -> QuantizeLinear -> DequantizeLinear; returns the DQ output."""
        name = name or x
        s = self.const(f"{name}_s", np.float32(scale))
        z = self.const(f"{name}_zp", np.asarray(zp, dtype))
        q = self.node("QuantizeLinear", [x, s, z], f"{name}_q", f"{name}_Q")
        return self.node("DequantizeLinear", [q, s, z], f"{name}_dq", f"{name}_DQ")

    def weight(self, name, shape, scale, dtype=np.int8):
        """An integer weight initializer read through a DequantizeLinear (``scale`` scalar or per channel)."""
        w = self.const(f"{name}_int", np.ones(shape, dtype))
        scale = np.asarray(scale, np.float32)
        s = self.const(f"{name}_s", scale)
        z = self.const(f"{name}_zp", np.zeros(scale.shape, dtype))
        attrs = {"axis": 0} if scale.ndim else {}
        return self.node("DequantizeLinear", [w, s, z], f"{name}_dq", f"{name}_DQ", **attrs)

    def model(self, output, elem=TensorProto.FLOAT):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(output, elem, [1, 2, 4, 4])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        onnx.checker.check_model(m)
        return m


def conv_block(s_in=2.0 ** -4, s_w=2.0 ** -6, s_out=2.0 ** -3, dtype=np.int8, float_weight=False):
    """x -> QDQ -> Conv (+Relu) -> QDQ -> MaxPool -> y (the logits, float)."""
    g = Graph()
    x = g.qdq("x", s_in, dtype)
    w = g.const("w", np.ones((2, 2, 1, 1), np.float32)) if float_weight else g.weight("w", (2, 2, 1, 1), s_w)
    c = g.node("Conv", [x, w], "c", "conv")
    r = g.node("Relu", [c], "r", "relu")
    y = g.qdq(r, s_out, dtype)
    g.node("MaxPool", [y], "y", "pool", kernel_shape=[1, 1])
    return g.model("y")


def kinds(report):
    return [(f.node, f.kind) for f in report.findings]


def test_legal_block_passes():
    report = check_model(conv_block(), "npu-pow2")
    assert report.legal and report.findings == () and report.summary() == "legal"
    assert report.integer_ops == 2  # the Conv (its Relu fused) and the MaxPool writing the logits


def test_float_weight_is_float_compute():
    report = check_model(conv_block(float_weight=True), NPU)
    assert kinds(report) == [("conv", "float")]
    assert "input 'w'" in report.findings[0].why and "no float fallback" in report.findings[0].why
    assert not report.legal and report.bad_nodes == ["conv"]
    trt = check_model(conv_block(float_weight=True), "tensorrt")  # float is one of its fallbacks
    assert trt.legal and [f.node for f in trt.fallback_ops] == ["conv"]


def test_output_read_in_float():
    g = Graph()
    x = g.qdq("x", 2.0 ** -4)
    c = g.node("Conv", [x, g.weight("w", (2, 2, 1, 1), 2.0 ** -6)], "c", "conv")
    s = g.node("Sigmoid", [c], "s", "sigmoid")  # not an integer op: the Conv's output leaves in float
    y = g.qdq(s, 2.0 ** -7)
    g.node("MaxPool", [y], "y", "pool", kernel_shape=[1, 1])
    report = check_model(g.model("y"), NPU)
    assert kinds(report) == [("conv", "float")] and "read in float by Sigmoid sigmoid" in report.findings[0].why


def test_non_pow2_scales():
    report = check_model(conv_block(s_in=0.03, s_w=0.05), NPU)
    assert kinds(report) == [("x_Q", "pow2"), ("w_DQ", "pow2")]
    assert report.findings[0].what == "scale of activation 'x'" and report.findings[1].what == "scale of weight 'w_int'"
    assert check_model(conv_block(s_in=0.03, s_w=0.05), "tensorrt").legal


def test_per_channel_weights_on_a_per_tensor_target():
    g = Graph()
    x = g.qdq("x", 2.0 ** -4)
    c = g.node("Conv", [x, g.weight("w", (2, 2, 1, 1), [2.0 ** -6, 2.0 ** -5])], "c", "conv")
    g.node("Relu", [c], "y", "relu")
    model = g.model("y")
    assert check_model(model, NPU).legal  # the built-in takes either granularity
    report = check_model(model, replace(NPU, weight_granularity="per-tensor"))
    assert kinds(report) == [("w_DQ", "granularity")] and "2 scales" in report.findings[0].what
    per_channel_only = replace(NPU, weight_granularity="per-channel")
    assert kinds(check_model(conv_block(), per_channel_only)) == [("w_DQ", "granularity")]


def add_graph(s_a, s_b, op="Add"):
    g = Graph()
    a = g.qdq("x", s_a, name="a")
    b = g.qdq("x", s_b, name="b")
    attrs = {"axis": 1} if op == "Concat" else {}
    g.node(op, [a, b], "y", "join", **attrs)
    return g.model("y")


@pytest.mark.parametrize("op", ["Add", "Concat"])
def test_add_concat_alignment(op):
    two_bits = add_graph(2.0 ** -4, 2.0 ** -6, op)
    assert check_model(two_bits, NPU).legal  # 2 bits apart, max_shift 8
    report = check_model(two_bits, replace(NPU, max_shift=1))
    assert kinds(report) == [("join", "align")] and "2 bits apart" in report.findings[0].why
    shared = replace(NPU, add_concat="shared")
    assert kinds(check_model(two_bits, shared)) == [("join", "align")]
    assert check_model(add_graph(2.0 ** -4, 2.0 ** -4, op), shared).legal
    free = replace(TARGETS["tensorrt"], add_concat="shift", max_shift=8)
    report = check_model(add_graph(0.1, 0.3, op), free)
    assert kinds(report) == [("join", "align")] and "ratio 3 is not a power of two" in report.findings[0].why
    assert check_model(add_graph(0.1, 0.3, op), "tensorrt").legal  # any scales


def test_int16_activations():
    model = conv_block(dtype=np.int16)
    assert check_model(model, NPU).legal  # npu-pow2 allows int16 as its fallback
    report = check_model(model, replace(NPU, fallbacks=()))
    assert kinds(report) == [("x_Q", "int16"), ("r_Q", "int16")]


def test_fp16_compute():
    g = Graph()
    x = g.qdq("x", 2.0 ** -4)
    h = g.node("Cast", [x], "h", "to_fp16", to=TensorProto.FLOAT16)
    c = g.node("Conv", [h, g.const("w16", np.ones((2, 2, 1, 1), np.float16))], "c", "conv")
    f = g.node("Cast", [c], "f", "to_fp32", to=TensorProto.FLOAT)
    y = g.qdq(f, 2.0 ** -3)
    g.node("MaxPool", [y], "y", "pool", kernel_shape=[1, 1])
    model = g.model("y")
    assert kinds(check_model(model, NPU)) == [("conv", "fp16")]
    assert check_model(model, "tensorrt").legal


def test_activation_type_and_zero_point():
    assert kinds(check_model(conv_block(dtype=np.uint8), NPU)) == [("x_Q", "dtype"), ("r_Q", "dtype")]
    g = Graph()
    x = g.qdq("x", 2.0 ** -4, zp=3)
    g.node("MaxPool", [x], "y", "pool", kernel_shape=[1, 1])
    assert kinds(check_model(g.model("y"), NPU)) == [("x_Q", "zero-point")]
    assert check_model(g.model("y"), replace(TARGETS["ort-cpu"], activation_dtype="int8")).legal


def test_shape_arithmetic_is_not_an_activation():
    """A Concat of shape integers feeding a Resize's sizes is no activation: not flagged on any target."""
    g = Graph()
    x = g.qdq("x", 2.0 ** -4)
    shape = g.node("Shape", [x], "shape", "shape", start=0, end=2)
    sizes = g.node("Concat", [shape, g.const("hw", np.array([8, 8], np.int64))], "sizes", "sizes", axis=0)
    g.node("Resize", [x, "", "", sizes], "y", "up", mode="nearest")
    report = check_model(g.model("y"), replace(NPU, add_concat="shared"))
    assert report.legal and report.integer_ops == 1


def test_report_json_and_text(tmp_path):
    import json

    from fcnquant.check import write_json

    report = check_model(conv_block(float_weight=True), NPU)
    write_json(report, tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["legal"] is False and d["target"] == "npu-pow2" and d["findings"][0]["node"] == "conv"
    assert d["target_sha256"] == NPU.sha256
    lines = report.format_text().splitlines()
    assert lines[0].startswith("conv (Conv): computes in float - input 'w'") and len(lines) == 2
