"""Graph builders for the recovery tests: the branching model, one-layer sessions and the equalization graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
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


def whole_and_merged(make, batches, shards: int = 3):
    """Returns (one accumulator fed every batch, ``shards`` accumulators fed consecutive slices and merged in order);
    ``make(record=...)`` builds one, ``record`` True after the first shard as the executors set it."""
    whole = make()
    for x in batches:
        whole.update(x)
    parts = [make(record=k > 0) for k in range(shards)]
    per = -(-len(batches) // shards)
    for k, x in enumerate(batches):
        parts[k // per].update(x)
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    return whole, merged


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


def ort_layer(op, wshape, attrs, xshape, w):
    """An onnxruntime session of one Conv or ConvTranspose (``attrs``) with the constant weight ``w``, input x."""
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def brute_conv_mean(x, w, pads, strides, dilations):
    """Independent: the convolution computed output position by output position, then its mean per channel."""
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    xp = np.zeros((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]))
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    oh = (xp.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, co, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * strides[0]:i * strides[0] + dilations[0] * (kh - 1) + 1:dilations[0],
                       j * strides[1]:j * strides[1] + dilations[1] * (kw - 1) + 1:dilations[1]]
            out[:, :, i, j] = np.einsum("ncij,ocij->no", patch, w)
    return out.mean(axis=(0, 2, 3))
