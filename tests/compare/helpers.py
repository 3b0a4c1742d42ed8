"""A float model and its "quantized" copy with a planted error, for the compare tests."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fcnquant.compare.tensors.pairing import TENSOR_MAP_KEY

HW = 32
PLANTED_STD = 0.35  # std of the fixed noise tensor added to layer a


def boundary_band_brute_force(labels: np.ndarray, r: int) -> np.ndarray:
    """The pixels with another label within ``r`` pixels (a square window), one pixel at a time."""
    h, w = labels.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            win = labels[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            out[y, x] = bool((win != labels[y, x]).any())
    return out


def planted_params():
    """The weights of both models and the noise planted in the copy: ``(w1, b1, w2, b2, noise)``."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((21, 8)).astype(np.float32) * 0.3
    b2 = np.linspace(3.0, -3.0, 21).astype(np.float32)  # a large bias keeps the logits' SNR above a's
    noise = (rng.standard_normal((1, 8, HW, HW)) * PLANTED_STD).astype(np.float32)
    return w1, b1, w2, b2, noise


def write_planted_models(folder, batch=1):
    """x -> Conv1 (1x1) -> a -> Conv2 (1x1) -> output (21 logits); the "quantized" copy adds a fixed noise to a.

    The copy carries fcnquant's tensor map, so its noisy tensor stands for a. Returns the two paths, float first.
    """
    w1, b1, w2, b2, noise = planted_params()
    paths = []
    for noisy in (False, True):
        inits = [numpy_helper.from_array(w1[:, :, None, None], "w1"), numpy_helper.from_array(b1, "b1"),
                 numpy_helper.from_array(w2[:, :, None, None], "w2"), numpy_helper.from_array(b2, "b2")]
        nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a_raw" if noisy else "a"], name="conv1")]
        if noisy:
            inits.append(numpy_helper.from_array(noise, "noise"))
            nodes.append(helper.make_node("Add", ["a_raw", "noise"], ["a_q"], name="plant"))
        nodes.append(helper.make_node("Conv", ["a_q" if noisy else "a", "w2", "b2"], ["output"], name="conv2"))
        graph = helper.make_graph(
            nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, HW, HW])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 21, HW, HW])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        if noisy:
            entry = model.metadata_props.add()
            entry.key, entry.value = TENSOR_MAP_KEY, json.dumps({"a": "a_q", "output": "output"})
        path = folder / ("noisy.onnx" if noisy else "float.onnx")
        onnx.save(model, str(path))
        paths.append(path)
    return paths


def skip_model(hw: int = HW):
    """x -> Conv c1 (3->16, 3x3) -> h -> Relu -> r -> Conv c2 (16->16, 3x3) -> c; s = c + r -> Conv c3 (1x1) ->
    output (21 logits): onnxruntime folds the Add into c2's kernel unless ``c`` is a graph output. A ModelProto."""
    rng = np.random.default_rng(0)
    inits = []
    for name, cin, cout, k in (("c1", 3, 16, 3), ("c2", 16, 16, 3), ("c3", 16, 21, 1)):
        w = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_b")]
    nodes = [helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "c2_w", "c2_b"], ["c"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "r"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "c3_w", "c3_b"], ["output"], name="c3")]
    graph = helper.make_graph(
        nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 21, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
