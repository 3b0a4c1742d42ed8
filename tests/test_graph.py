"""fcnquant.graph: node order, producer and consumer maps, and shape inference on the weight-less skeleton."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.errors import ModelError
from fcnquant.graph import (
    SKELETON_ELEMENTS,
    consumers,
    inferred_value_infos,
    parse_without_weights,
    producers,
    skeleton,
    sort_topologically,
    topological_order,
    weights_by_reference,
)


def _scrambled():
    """Six nodes whose file order is not topological, worked by hand in the tests below.

    x -> conv -> c -> relu -> r; r -> drop -> (t, mask v); r, r -> mul -> u; u + t -> add -> out;
    v -> tail -> extra. conv reads the graph input x, the initializer w and an omitted optional input ("").
    """
    nodes = [
        helper.make_node("Add", ["u", "t"], ["out"], name="add"),
        helper.make_node("Dropout", ["r"], ["t", "v"], name="drop"),
        helper.make_node("Mul", ["r", "r"], ["u"], name="mul"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["x", "w", ""], ["c"], name="conv"),
        helper.make_node("Identity", ["v"], ["extra"], name="tail"),
    ]
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        nodes, "scrambled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4]),
         helper.make_tensor_value_info("extra", TensorProto.BOOL, [1, 4, 4, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _names(nodes) -> list[str]:
    return [n.name for n in nodes]


def test_producers_and_consumers_of_a_hand_worked_graph():
    g = _scrambled().graph
    made = {t: n.name for t, n in producers(g).items()}
    assert made == {"out": "add", "t": "drop", "v": "drop", "u": "mul", "r": "relu", "c": "conv", "extra": "tail"}
    users = {t: _names(ns) for t, ns in consumers(g).items()}
    # file order; mul reads r twice; the omitted input "" is nobody's tensor
    assert users == {"u": ["add"], "t": ["add"], "r": ["drop", "mul", "mul"], "c": ["relu"], "x": ["conv"],
                     "w": ["conv"], "v": ["tail"]}


def test_producers_maps_a_name_written_twice_to_the_last_writer():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="first"),
                           helper.make_node("Neg", ["x"], ["y"], name="second")], "g", [], [])
    assert producers(g)["y"].name == "second"


def test_earliest_first_order_of_a_hand_worked_graph():
    # ready at the start: conv only. relu frees drop (file position 1) and mul (2); drop goes first and frees
    # tail (5); mul frees add (0), which goes before tail
    assert _names(topological_order(_scrambled().graph)) == ["conv", "relu", "drop", "mul", "add", "tail"]


def test_depth_first_order_of_a_hand_worked_graph():
    # add (file position 0) pulls in u's producers first (mul <- relu <- conv), then t's (drop); tail comes last
    order = topological_order(_scrambled().graph, depth_first=True)
    assert _names(order) == ["conv", "relu", "mul", "drop", "add", "tail"]


def test_order_returns_the_graphs_node_objects():
    g = _scrambled().graph
    nodes = list(g.node)
    for depth_first in (False, True):
        order = topological_order(g, depth_first=depth_first)
        assert sorted(map(id, order)) == sorted(map(id, nodes))


@pytest.mark.parametrize("depth_first", [False, True])
def test_a_topological_file_order_is_kept(depth_first):
    # the file order, also where other orders would be valid
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["b"], name="b"),
                           helper.make_node("Relu", ["x"], ["a"], name="a"),
                           helper.make_node("Add", ["a", "b"], ["y"], name="y")], "g", [], [])
    assert _names(topological_order(g, depth_first=depth_first)) == ["b", "a", "y"]


def test_the_two_orders_differ_only_in_tie_breaking():
    # join reads a then b; b's producer is earlier in the file than a's
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="join"),
                           helper.make_node("Neg", ["x"], ["b"], name="make_b"),
                           helper.make_node("Relu", ["x"], ["a"], name="make_a")], "g", [], [])
    assert _names(topological_order(g)) == ["make_b", "make_a", "join"]
    assert _names(topological_order(g, depth_first=True)) == ["make_a", "make_b", "join"]


def test_sort_topologically_reorders_in_place():
    model = _scrambled()
    sort_topologically(model.graph)
    assert _names(model.graph.node) == ["conv", "relu", "drop", "mul", "add", "tail"]
    onnx.checker.check_model(model)  # the checker wants a topological node order
    for depth_first in (False, True):
        assert _names(topological_order(model.graph, depth_first=depth_first)) == _names(model.graph.node)


@pytest.mark.parametrize("depth_first", [False, True])
def test_cycles_raise(depth_first):
    loop = helper.make_graph([helper.make_node("Relu", ["q"], ["p"], name="a"),
                              helper.make_node("Relu", ["p"], ["q"], name="b")], "g", [], [])
    with pytest.raises(ModelError, match="cycle"):
        topological_order(loop, depth_first=depth_first)
    itself = helper.make_graph([helper.make_node("Relu", ["z"], ["z"], name="self")], "g", [], [])
    with pytest.raises(ModelError, match="cycle"):
        topological_order(itself, depth_first=depth_first)


def _with_weights():
    """x -> Conv(big weight) -> Reshape(small shape constant) -> y; the weight is above SKELETON_ELEMENTS."""
    big = numpy_helper.from_array(np.ones((64, 16, 3, 3), np.float32), "w")  # 9216 elements
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [big, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _full_inference(model) -> dict:
    full = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    return {v.name: v for v in list(full.input) + list(full.value_info) + list(full.output)
            if v.type.tensor_type.elem_type}


def _same_infos(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(got[k].SerializeToString() == want[k].SerializeToString() for k in want)


def test_skeleton_lifts_large_initializers_and_keeps_small_constants():
    model = _with_weights()
    assert 64 * 16 * 3 * 3 > SKELETON_ELEMENTS
    bare, lifted = skeleton(model)
    assert lifted == {"w"}
    assert [t.name for t in bare.graph.initializer] == ["shape"]
    assert [i.name for i in bare.graph.input] == ["x", "w"]
    w = bare.graph.input[1].type.tensor_type
    assert w.elem_type == TensorProto.FLOAT and [d.dim_value for d in w.shape.dim] == [64, 16, 3, 3]
    assert bare.graph.node == model.graph.node and bare.graph.output == model.graph.output
    assert bare.opset_import == model.opset_import and bare.ir_version == model.ir_version


def test_inference_on_the_skeleton_equals_inference_on_the_model():
    model = _with_weights()
    infos, types = inferred_value_infos(model)
    want = _full_inference(model)
    assert _same_infos(infos, want)
    assert [d.dim_value for d in infos["y"].type.tensor_type.shape.dim] == [1, 64 * 8 * 8]  # needs "shape"'s value
    assert "w" not in infos  # an input of the skeleton only
    assert types["w"] == TensorProto.FLOAT and types["shape"] == TensorProto.INT64 and types["c"] == TensorProto.FLOAT


def test_a_large_initializer_declared_as_input_keeps_its_declaration():
    model = _with_weights()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 16, 3, 3]))
    bare, lifted = skeleton(model)
    assert lifted == set() and [i.name for i in bare.graph.input] == ["x", "w"]
    infos, _ = inferred_value_infos(model)
    assert _same_infos(infos, _full_inference(model))


def test_constant_outputs_are_typed_and_failed_inference_falls_back_to_declarations(monkeypatch):
    model = _with_weights()
    model.graph.node.insert(0, helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.array([2], np.int32))))
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    _, types = inferred_value_infos(model)
    assert types["k"] == TensorProto.INT32

    def fail(*args, **kwargs):
        raise RuntimeError("inference failed")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    infos, types = inferred_value_infos(model)
    assert set(infos) == {"x", "c", "y"}  # the declared ones
    assert types == {"x": 1, "c": 1, "y": 1, "w": 1, "shape": 7, "k": 6}


def test_inference_on_the_skeleton_equals_the_whole_model_for_shipped_and_quantized_models(tmp_path):
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.workflows import Outputs, calibrate

    quant = tmp_path / "q.onnx"
    calibrate(demo_model_path("fcn8s"), DataConfig(split="train", num_images=2), run=RunConfig(progress=False),
              outputs=Outputs(model=quant))
    for path in (demo_model_path("fcn8s"), demo_model_path("fcn_r50_d8"), quant):
        m = onnx.load(str(path))
        bare, lifted = skeleton(m)
        assert lifted and len(bare.SerializeToString()) < len(m.SerializeToString()) / 2
        got, types = inferred_value_infos(m)
        assert _same_infos(got, _full_inference(m))
        assert all(types[t.name] == t.data_type for t in m.graph.initializer)


def _weighted_model() -> onnx.ModelProto:
    """Conv (a large weight, stored raw), Add of a small raw constant, Reshape by a small int64 shape, a Constant
    node, metadata; a second large weight stored as float_data (not raw) and one marked as external-free DEFAULT."""
    rng = np.random.default_rng(3)
    big = numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w")  # 1728 elements
    huge = numpy_helper.from_array(rng.standard_normal((SKELETON_ELEMENTS * 5,)).astype(np.float32), "huge")
    huge.data_location = TensorProto.DEFAULT
    small = numpy_helper.from_array(np.full((1, 64, 1, 1), 0.5, np.float32), "b")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    listed = helper.make_tensor("listed", TensorProto.FLOAT, [SKELETON_ELEMENTS * 5],
                                rng.standard_normal(SKELETON_ELEMENTS * 5).astype(np.float32).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["flat"]),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(3, np.float32))),
             helper.make_node("Concat", ["huge", "listed"], ["both"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("flat", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("both", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, None)],
                              [big, huge, small, shape, listed])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"fcnquant.preset": "awesome"})
    return model


def test_parse_without_weights_is_the_model_less_its_large_raw_data():
    """Against onnx's own parse of the whole file: equal once the raw_data of tensors over 16 bytes x
    SKELETON_ELEMENTS is cleared; small raw tensors, float_data tensors, marks and metadata are kept."""
    model = _weighted_model()
    raw = model.SerializeToString()
    got = parse_without_weights(raw)
    want = onnx.load_from_string(raw)
    cleared = [t.name for t in want.graph.initializer if len(t.raw_data) > 16 * SKELETON_ELEMENTS]
    assert cleared == ["huge"]  # w (6912 bytes), b and shape stay: shape inference may read them
    for t in want.graph.initializer:
        if t.name in cleared:
            t.ClearField("raw_data")
    assert got.SerializeToString() == want.SerializeToString()
    assert got.graph.initializer[1].data_location == TensorProto.DEFAULT and got.graph.initializer[1].dims == [20480]
    assert len(got.graph.initializer[4].float_data) == SKELETON_ELEMENTS * 5  # not raw: parsed as it is
    # the same shapes are inferred as from the whole model (the dropped tensor is lifted by the skeleton anyway)
    infos, types = inferred_value_infos(got)
    full_infos, full_types = inferred_value_infos(onnx.load_from_string(raw))
    assert types == full_types and {k: v.SerializeToString() for k, v in infos.items()} == {
        k: v.SerializeToString() for k, v in full_infos.items()}


def test_parse_without_weights_keeps_concatenated_messages_and_rejects_garbage():
    """Bytes of a model followed by a patch message (protobuf merges them) parse as onnx parses them; a model with
    nothing to drop comes back whole; truncated or non-protobuf bytes raise ModelError."""
    model = _weighted_model()
    patch = onnx.ModelProto()
    patch.graph.output.append(onnx.ValueInfoProto(name="c"))
    raw = model.SerializeToString() + patch.SerializeToString()
    got = parse_without_weights(raw)
    assert [o.name for o in got.graph.output] == ["flat", "both", "k", "c"]
    assert len(got.graph.initializer) == 5 and not got.graph.initializer[1].raw_data
    plain = onnx.load_from_string(raw)
    del plain.graph.initializer[1:2]
    del got.graph.initializer[1:2]
    assert got.SerializeToString() == plain.SerializeToString()
    small = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    assert parse_without_weights(small.SerializeToString()) == small
    for bad, why in ((raw[:len(raw) // 2], "runs past its message"), (b"\x0b\x00\x00", "wire type 3"),
                     (b"not an onnx model at all", "wire type 6")):  # 0x0b: field 1, wire type 3; "n": 0x6e
        with pytest.raises(ModelError, match=why):
            parse_without_weights(bad)


def test_weights_by_reference_point_into_the_file_as_onnx_reads_external_data(tmp_path):
    """onnx's own external-data loader, given the rewritten bytes and the file's folder, restores the model as it
    was: the large raw tensor refers to its own bytes in the file (one data_location, EXTERNAL, even where the file
    marked it DEFAULT); the small raw ones and the float_data one stay inline."""
    from onnx.external_data_helper import load_external_data_for_model

    model = _weighted_model()
    path = tmp_path / "m.onnx"
    raw = model.SerializeToString()
    path.write_bytes(raw)
    ref = onnx.load_from_string(weights_by_reference(raw, "m.onnx"))
    huge = next(t for t in ref.graph.initializer if t.name == "huge")
    entries = {e.key: e.value for e in huge.external_data}
    offset, length = int(entries["offset"]), int(entries["length"])
    assert huge.data_location == TensorProto.EXTERNAL and entries["location"] == "m.onnx" and not huge.raw_data
    assert raw[offset:offset + length] == numpy_helper.to_array(model.graph.initializer[1]).tobytes()
    assert [t.name for t in ref.graph.initializer if t.data_location == TensorProto.EXTERNAL] == ["huge"]
    load_external_data_for_model(ref, str(tmp_path))  # clears the reference fields as it loads
    huge.data_location = TensorProto.DEFAULT  # the file's own mark, which the reference replaced
    assert ref.SerializeToString() == raw
    small = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    assert weights_by_reference(small.SerializeToString(), "s.onnx") == small.SerializeToString()
