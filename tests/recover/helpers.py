"""Graph builders for the recovery tests: the branching model and the hand-built graphs of the equalization tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fcnquant.runtime import make_session


def branching_model(seed: int = 0) -> onnx.ModelProto:
    """input -> conv1 -> relu -> {conv2 (1x1), conv3 (3x3)} -> add -> relu -> conv4 (no bias) -> output."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, s=0.4):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    inits = [init("w1", 6, 3, 3, 3), init("b1", 6, s=0.1), init("w2", 5, 6, 1, 1), init("b2", 5, s=0.1),
             init("w3", 5, 6, 3, 3), init("b3", 5, s=0.1), init("w4", 4, 5, 1, 1)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "c3"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w4"], ["output"], name="conv4"),
    ]
    graph = helper.make_graph(nodes, "branching",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


RNG = np.random.default_rng(0)  # shared by the tests that draw from it: their weights depend on the tests run before


def conv(name, x, w, b=None, out=None, **attrs):
    """A Conv node named ``name`` (its output too, unless ``out`` is given)."""
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [out or name], name=name, **attrs)


def make_model(nodes, inits, in_shape, outputs=("y",), metadata=None):
    """A checked opset-17 model of ``nodes`` with input x (``in_shape``), float ``inits`` and ``metadata``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    return model


def run(model, x):
    """The first output of ``model`` (in memory) for input x, from onnxruntime."""
    return make_session(model.SerializeToString()).run(None, {"x": x})[0]


def rel_diff(a, b):
    """Largest absolute difference relative to the largest magnitude of ``a``."""
    return float(np.abs(a - b).max() / np.abs(a).max())


def spread(shape, axis):
    """Random weights whose channels along ``axis`` have very different magnitudes."""
    w = RNG.normal(size=shape)
    scale_shape = [1] * len(shape)
    scale_shape[axis] = shape[axis]
    return w * RNG.uniform(0.05, 5.0, size=scale_shape)


def init(model, name):
    """The initializer ``name`` of ``model`` as a numpy array."""
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
