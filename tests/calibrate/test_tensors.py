"""Graph analysis: activation_tensors / inherited_scales on small hand-built graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

from fcnquant.calibrate.tensors import activation_tensors, inherited_scales

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def fcn_like() -> onnx.ModelProto:
    """conv-relu-pool x2, two score convs, Resize + Add skip fusion, final Resize to the logits."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    fcn (float[1,3,32,32] x) => (float[1,4,32,32] out) {
        c1 = Conv <pads = [1,1,1,1]> (x, w1, b1)
        r1 = Relu (c1)
        p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
        c2 = Conv <pads = [1,1,1,1]> (p1, w2)
        r2 = Relu (c2)
        p2 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r2)
        s2 = Conv (p2, ws2, bs2)
        s1 = Conv (p1, ws1)
        u2 = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (s2, , sc)
        a = Add (u2, s1)
        out = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (a, , sc)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        _w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 8, 8, 3, 3), _w("ws2", 4, 8, 1, 1), _w("bs2", 4),
        _w("ws1", 4, 8, 1, 1), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    ])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_fcn_like_observed_and_inherited():
    model = fcn_like()
    assert activation_tensors(model) == ["x", "r1", "r2", "s2", "s1", "a", "out"]
    assert inherited_scales(model) == {"c1": "r1", "p1": "r1", "c2": "r2", "p2": "r2", "u2": "s2"}


def test_inherited_ranges_lie_within_their_source_range():
    """Independent check of the rules: run the graph, every inherited tensor's range is inside its source's."""
    import onnxruntime as ort

    from fcnquant.runtime import with_outputs

    model = fcn_like()
    inherited = inherited_scales(model)
    names = sorted(set(inherited) | set(inherited.values()))
    sess = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for name, src in inherited.items():
        lo, hi = min(values[src].min(), 0.0), max(values[src].max(), 0.0)
        v = values[name]
        if name in ("c1", "c2"):  # fused: the Relu clamps the negative side, positive side is identical
            v = np.maximum(v, 0)
        assert lo <= v.min() and v.max() <= hi, name


def test_shape_subgraph_and_constants_are_not_activations():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2,8,8] x) => (float[1,2,16,16] y) {
        s = Shape (x)
        hw = Slice (s, st, en)
        hw2 = Mul (hw, two)
        nc = Slice (s, z, st)
        sizes = Concat <axis = 0> (nc, hw2)
        k = Constant <value = float[1] {2.0}> ()
        kk = Mul (k, k)
        xm = Mul (x, kk)
        y = Resize <mode = "nearest"> (xm, , , sizes)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([2], np.int64), "st"), numpy_helper.from_array(np.array([4], np.int64), "en"),
        numpy_helper.from_array(np.array([2], np.int64), "two"), numpy_helper.from_array(np.array([0], np.int64), "z"),
    ])
    assert activation_tensors(model) == ["x", "xm", "y"]
    assert inherited_scales(model) == {}


def test_fusion_requires_a_lone_relu_consumer():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2,8,8] x) => (float[1,2,8,8] y, float[1,2,8,8] c3) {
        c1 = Conv (x, w)
        r1 = Relu (c1)
        t1 = Add (c1, r1)
        c2 = Conv (t1, w)
        r2a = Relu (c2)
        r2b = Relu (c2)
        s = Add (r2a, r2b)
        c3 = Conv (s, w)
        r3 = Relu (c3)
        a = Add (r3, x)
        ar = Relu (a)
        y = Identity (ar)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(_w("w", 2, 2, 1, 1))
    # c1 has two consumers, c2 feeds two Relus, c3 is a graph output: none fused. Add -> lone Relu is fused.
    assert activation_tensors(model) == ["x", "c1", "r1", "t1", "c2", "r2a", "r2b", "s", "c3", "r3", "ar", "y"]
    assert inherited_scales(model) == {"a": "ar"}


def test_graph_output_is_observed_even_if_scale_preserving():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2,8,8] x) => (float[1,2,4,4] y) {
        c = Conv (x, w)
        y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (c)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(_w("w", 2, 2, 1, 1))
    assert activation_tensors(model) == ["x", "c", "y"]
    assert inherited_scales(model) == {}


def test_cubic_resize_concat_classifier_and_dropout_mask():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2,4,4] x) => (float[1,3] y) {
        u = Resize <mode = "cubic"> (x, , sc)
        n = Resize <mode = "nearest"> (x, , sc)
        cat = Concat <axis = 1> (u, n)
        d, m = Dropout (cat)
        p = Transpose <perm = [0,2,3,1]> (d)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, wf)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"), _w("wf", 3, 256),
    ])
    assert activation_tensors(model) == ["x", "u", "cat", "y"]
    assert inherited_scales(model) == {"n": "x", "d": "cat", "p": "cat", "f": "cat"}


def test_nodes_out_of_file_order_are_sorted():
    model = fcn_like()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    observed = activation_tensors(model)
    assert observed[0] == "x" and sorted(observed) == sorted(["x", "r1", "r2", "s2", "s1", "a", "out"])
    assert inherited_scales(model) == {"c1": "r1", "p1": "r1", "c2": "r2", "p2": "r2", "u2": "s2"}


def test_helper_built_graph_with_unknown_intermediate_types():
    node = helper.make_node("Relu", ["x"], ["r"])
    node2 = helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2])
    graph = helper.make_graph([node, node2], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert activation_tensors(model) == ["x", "r", "y"]


def test_cycle_is_reported():
    from fcnquant.errors import ModelError

    n1 = helper.make_node("Relu", ["b"], ["a"])
    n2 = helper.make_node("Relu", ["a"], ["b"])
    graph = helper.make_graph([n1, n2], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="cycle"):
        activation_tensors(helper.make_model(graph))
