"""Pairing float and quantized tensors: onnxruntime QDQ output, fp16 conversion, fcnquant's tensor map."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.compare.tensors.pairing import TENSOR_MAP_KEY, pair_tensors
from fcnquant.errors import ModelError


def _tiny_fcn(path=None):
    """Conv-Relu-Conv-Relu-MaxPool-score-Resize plus a skip score and Add (an FCN in miniature)."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["s3"], name="score"),
        helper.make_node("Resize", ["s3", "", "scales"], ["u3"], mode="linear", name="up"),
        helper.make_node("Conv", ["r1", "w4", "b4"], ["s1"], name="score_skip"),
        helper.make_node("Add", ["u3", "s1"], ["out"], name="fuse"),
    ]
    inits = [w("w1", 4, 3, 3, 3), w("b1", 4), w("w2", 4, 4, 3, 3), w("b2", 4), w("w3", 5, 4, 1, 1), w("b3", 5),
             w("w4", 5, 4, 1, 1), w("b4", 5), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


@pytest.fixture(scope="module")
def ort_qdq(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    d = tmp_path_factory.mktemp("qdq")
    _tiny_fcn(d / "f.onnx")
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "f.onnx"), str(d / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return onnx.load(str(d / "f.onnx")), onnx.load(str(d / "q.onnx"))


def test_ort_quantize_static_pairs_every_quantized_activation(ort_qdq):
    fm, qm = ort_qdq
    p = pair_tensors(fm, qm)
    assert p.source == "structure"
    assert p.unpaired_float == () and p.unpaired_quant == ()
    by_name = {x.float_name: x for x in p.pairs}
    nodes = {o: n for n in qm.graph.node for o in n.output}
    inits = {t.name for t in qm.graph.initializer}
    activation_qs = {n.output[0] for n in qm.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    # every activation QuantizeLinear of the model appears in exactly one measured pair's chain
    in_chains = [t for x in p.measured for t in x.chain if nodes[t].op_type == "QuantizeLinear"]
    assert sorted(in_chains) == sorted(activation_qs)
    for x in p.measured:
        assert nodes[x.quant_name].op_type == "DequantizeLinear"
        assert [nodes[t].op_type for t in x.chain] == ["QuantizeLinear", "DequantizeLinear"]
    # onnxruntime deleted the Relus and named each Conv's output after the Relu's: a name match would pair the
    # float Relu output 'r1' with the quantized model's raw (un-clipped) Conv output 'r1'. Structure does not.
    assert nodes["r1"].op_type == "Conv"
    assert by_name["r1"].head == "r1" and by_name["r1"].quant_name != "r1" and by_name["r1"].quantized
    assert by_name["c1"].quant_name == "r1" and not by_name["c1"].quantized  # raw Conv output, not quantized
    assert by_name["r1"].op_type == "Relu" and by_name["x"].op_type == "Input"
    # the graph output: the Add's renamed output passes through Q/DQ back to 'out'
    assert by_name["out"].quant_name == "out" and by_name["out"].head != "out"
    assert nodes[by_name["out"].head].op_type == "Add"
    assert [x.order for x in p.pairs] == sorted(x.order for x in p.pairs)


def test_fp16_conversion_pairs_through_casts(tmp_path):
    from onnxruntime.transformers import float16

    fm = _tiny_fcn()
    hm = float16.convert_float_to_float16(fm, keep_io_types=True)
    p = pair_tensors(fm, hm)
    assert p.unpaired_float == () and p.unpaired_quant == ()
    assert len(p.measured) == len(p.pairs) == 10  # input + 9 node outputs, all in float16
    by_name = {x.float_name: x for x in p.pairs}
    nodes = {o: n for n in hm.graph.node for o in n.output}
    # input: x -> Cast(fp16); output: Add (fp16) -> Cast(float) -> out
    assert by_name["x"].head == "x" and nodes[by_name["x"].quant_name].op_type == "Cast"
    assert by_name["out"].quant_name == "out" and nodes[by_name["out"].head].op_type == "Add"
    for name in ("c1", "r1", "p2", "s3", "u3", "s1"):
        assert by_name[name].quant_name == name and by_name[name].chain == ()


def test_tensor_map_is_used_when_present(ort_qdq):
    fm, qm = ort_qdq
    mapped = onnx.ModelProto()
    mapped.CopyFrom(qm)
    entry = mapped.metadata_props.add()
    entry.key, entry.value = TENSOR_MAP_KEY, json.dumps({"r2": "r2_DequantizeLinear_Output", "nope": "x"})
    p = pair_tensors(fm, mapped)
    assert p.source == "tensor_map"
    by_name = {x.float_name: x for x in p.pairs}
    assert by_name["r2"].source == "tensor_map" and by_name["r2"].head == "r2"
    assert by_name["r1"].source == "structure"  # not in the map: structural pairing fills in
    assert "nope" not in by_name  # a map entry naming an unknown tensor is skipped with a warning

    broken = onnx.ModelProto()
    broken.CopyFrom(qm)
    entry = broken.metadata_props.add()
    entry.key, entry.value = TENSOR_MAP_KEY, "[1, 2"
    with pytest.raises(ModelError, match="tensor_map"):
        pair_tensors(fm, broken)


def test_unmatched_nodes_are_listed_not_dropped():
    fm = _tiny_fcn()
    qm = onnx.ModelProto()
    qm.CopyFrom(fm)
    for node in qm.graph.node:
        if node.name == "pool":  # a different op where the float model has MaxPool
            node.op_type = "AveragePool"
    p = pair_tensors(fm, qm)
    # MaxPool and everything downstream of it on that branch has no counterpart...
    assert set(p.unpaired_float) == {"p2", "s3", "u3", "out"}
    assert set(p.unpaired_quant) == {"p2", "s3", "u3", "out"}
    # ...while the rest still pairs (without Q/DQ nothing is quantized, so nothing is measured)
    assert {x.float_name for x in p.pairs} == {"x", "c1", "r1", "c2", "r2", "s1"}
    assert p.measured == ()


def test_duplicate_names_do_not_fool_structure():
    # the quantized model swaps the names of the two score convs' outputs; pairing follows the graph
    fm = _tiny_fcn()
    qm = onnx.ModelProto()
    qm.CopyFrom(fm)
    rename = {"s3": "s1", "s1": "s3"}
    for node in qm.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    p = pair_tensors(fm, qm)
    by_name = {x.float_name: x for x in p.pairs}
    assert by_name["s3"].quant_name == "s1" and by_name["s1"].quant_name == "s3"
