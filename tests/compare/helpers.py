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
