"""The tuner's layers (fcnquant.tune.layers): a Conv with its ReLU is one layer, scale-preserving ops are none."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper


def test_find_layers_fuses_relu_and_skips_scale_preserving_ops():
    from onnx import TensorProto, helper

    from fcnquant.tune import find_layers

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[1, 1], name="pool"),
             helper.make_node("Conv", ["p", "w2"], ["d"], name="conv2"),
             helper.make_node("Add", ["d", "p"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w, w2])
    layers = find_layers(helper.make_model(g))
    assert [(x.name, x.nodes, x.output) for x in layers] == [
        ("conv", ("conv", "relu"), "r"), ("conv2", ("conv2",), "d"), ("add", ("add",), "y")]
    assert [x.name for x in find_layers(helper.make_model(g), float_nodes=["conv2"])] == ["conv", "add"]
