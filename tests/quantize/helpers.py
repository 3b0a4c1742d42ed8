"""Shared builders for the quantize tests: tiny FCN-like graphs, float activations, tables from ranges.

The scale arithmetic here is an independent numpy restatement of the target rules (not fcnquant's code):
ort-cpu uint8 asymmetric over [min(lo, 0), max(hi, 0)]; tensorrt int8 symmetric amax / 127; npu-pow2 the power of
two at or above amax / 127.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fcnquant._io import file_sha256
from fcnquant.calibrate.table import CalibrationTable, TensorEntry
from fcnquant.runtime import make_session, with_outputs


def ref_qparams(lo: float, hi: float, target: str) -> tuple[float, int]:
    """Returns (scale, zero point) by the target's rule, computed from scratch."""
    if target == "ort-cpu":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255.0
        return scale, int(round(-lo / scale))
    amax = max(abs(lo), abs(hi))
    scale = amax / 127.0
    if target == "npu-pow2":
        scale = 2.0 ** math.ceil(math.log2(scale))
    return scale, 0


def init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_fcn(mode: str = "align_corners", deconv: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A 16x16 FCN8s-like graph: conv+relu, pool, conv+relu, pool, score conv, 2x up, skip score, Add, 2x up.

    The first upsampling is a Resize (``mode`` = its coordinate_transformation_mode) or, with ``deconv``,
    a ConvTranspose 4->4 (kernel 4, stride 2, pad 1) as in the original Caffe FCNs.
    """
    rng = np.random.default_rng(seed)
    inits = [
        init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.4), init("b1", rng.standard_normal(8) * 0.1),
        init("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2), init("b2", rng.standard_normal(8) * 0.1),
        init("w_score", rng.standard_normal((4, 8, 1, 1)) * 0.4), init("b_score", rng.standard_normal(4) * 0.1),
        init("w_skip", rng.standard_normal((4, 8, 1, 1)) * 0.4), init("b_skip", rng.standard_normal(4) * 0.1),
        numpy_helper.from_array(np.array([1, 4, 8, 8], np.int64), "size8"),
        numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "size16"),
    ]
    resize = dict(mode="linear", coordinate_transformation_mode=mode)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w_score", "b_score"], ["score"], name="score_fr"),
    ]
    if deconv:
        inits.append(init("w_up", rng.standard_normal((4, 4, 4, 4)) * 0.3))
        nodes.append(helper.make_node("ConvTranspose", ["score", "w_up"], ["up1"], name="upscore2",
                                      kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Resize", ["score", "", "", "size8"], ["up1"], name="up1", **resize))
    nodes += [
        helper.make_node("Conv", ["p1", "w_skip", "b_skip"], ["skip"], name="score_pool"),
        helper.make_node("Add", ["up1", "skip"], ["fuse"], name="fuse"),
        helper.make_node("Resize", ["fuse", "", "", "size16"], ["y"], name="up_final", **resize),
    ]
    graph = helper.make_graph(
        nodes, "tiny_fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tiny_convnet(seed: int = 0) -> onnx.ModelProto:
    """x[1,2,6,6] -> Conv 2->3 (3x3, pad 1, bias) -> Relu -> Conv 3->2 (1x1, bias) -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        init("w1", rng.standard_normal((3, 2, 3, 3)) * 0.5), init("b1", rng.standard_normal(3) * 0.2),
        init("w2", rng.standard_normal((2, 3, 1, 1)) * 0.5), init("b2", rng.standard_normal(2) * 0.2),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def images(shape, n: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def float_activations(model_path: Path, names: list[str], xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Returns {tensor: values over all images concatenated (flattened)} from the float model."""
    model = onnx.load(str(model_path))
    sess = make_session(with_outputs(model, names).SerializeToString())
    input_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for x in xs:
        values = dict(zip(out_names, sess.run(None, {input_name: x})))
        values[input_name] = x
        for n in names:
            acc[n].append(values[n].ravel())
    return {n: np.concatenate(v) for n, v in acc.items()}


def make_table(
    model_path: Path, xs: list[np.ndarray], target: str, names: list[str] | None = None
) -> CalibrationTable:
    """Returns a minmax table for ``model_path`` with ranges over ``xs`` and scales by ``ref_qparams``."""
    from fcnquant.calibrate.tensors import activation_tensors

    model = onnx.load(str(model_path))
    names = names if names is not None else activation_tensors(model)
    acts = float_activations(model_path, names, xs)
    tensors = {}
    for n, v in acts.items():
        lo, hi = float(v.min()), float(v.max())
        scale, zp = ref_qparams(lo, hi, target)
        tensors[n] = TensorEntry(lo, hi, lo, hi, scale, zp)
    return CalibrationTable(file_sha256(model_path), "minmax", target, tensors)


def with_entry(table: CalibrationTable, name: str, **changes) -> CalibrationTable:
    """Returns ``table`` with tensor ``name``'s entry changed (entries are frozen)."""
    table.tensors[name] = replace(table.tensors[name], **changes)
    return table


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def producer(model: onnx.ModelProto, tensor: str):
    for n in model.graph.node:
        if tensor in n.output:
            return n
    return None


def node(model: onnx.ModelProto, name: str):
    for n in model.graph.node:
        if n.name == name:
            return n
    raise KeyError(name)


def attr(n, name: str, default=None):
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def dq_params(model: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray, int | None, np.ndarray]:
    """Returns (scale, zero point, axis, quantized data or None) of the DequantizeLinear producing ``tensor``."""
    dq = producer(model, tensor)
    assert dq is not None and dq.op_type == "DequantizeLinear", f"{tensor} is not a DequantizeLinear output"
    inits = {t.name for t in model.graph.initializer}
    data = initializer(model, dq.input[0]) if dq.input[0] in inits else None
    return initializer(model, dq.input[1]), initializer(model, dq.input[2]), attr(dq, "axis"), data


def run(model_path: Path, x: np.ndarray, optimization: str = "all") -> np.ndarray:
    sess = make_session(str(model_path), optimization=optimization)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
