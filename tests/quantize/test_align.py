"""Add/Concat inputs on the sum's grid for targets that round their alignment ties up (fcnquant.quantize.align):
which inputs move, the emitted scales against the table's own arithmetic, and targets that stay as they were."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fcnquant.quantize import QuantConfig, quantize_model
from fcnquant.quantize.align import applies, sum_aligned, sum_aligned_inputs
from fcnquant.recover.scale_search import scale_groups
from fcnquant.targets import builtin_path, get_target
from tests.quantize.helpers import images, init, initializer, make_table, ref_qparams, save_model, tiny_fcn, with_entry

X_SHAPE = (1, 3, 16, 16)


def _q_scale(q: onnx.ModelProto, tensor: str) -> float:
    (qn,) = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == qn.output[0]]
    assert dqs and all(initializer(q, d.input[1]) == initializer(q, qn.input[1]) for d in dqs)
    return float(initializer(q, qn.input[1]))


def _emit(tmp_path, target, ranges: dict[str, float]):
    """The tiny FCN emitted for ``target`` from a table whose ``ranges`` ({tensor: amax}) are forced."""
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    table = make_table(src, images(X_SHAPE), "npu-pow2")
    for name, amax in ranges.items():
        scale, _ = ref_qparams(-amax, amax, "npu-pow2")
        with_entry(table, name, lo=-amax, hi=amax, min=-amax, max=amax, scale=scale, zero_point=0)
    out = tmp_path / f"fcn.{tmp_path.name}.onnx"
    quantize_model(src, table, out, QuantConfig(target=target, per_channel=False))
    return onnx.load(str(out)), table


@pytest.fixture
def half_even_twin(tmp_path):
    """npu-pow2's target file with ties rounded to even."""
    text = builtin_path("npu-pow2").read_text().replace('rounding = "half_up"', 'rounding = "half_even"')
    path = tmp_path / "npu-even.toml"
    path.write_text(text.replace('name = "npu-pow2"', 'name = "npu-even"'))
    return path


def test_add_inputs_finer_than_the_sum_take_its_scale_on_a_half_up_target(tmp_path, half_even_twin):
    # the skip score (a Conv) and the upsampled score (a linear Resize) are finer than their sum
    ranges = {"skip": 0.4, "score": 0.3, "fuse": 3.0}
    (tmp_path / "up").mkdir()
    (tmp_path / "even").mkdir()
    up, table = _emit(tmp_path / "up", "npu-pow2", ranges)
    even, _ = _emit(tmp_path / "even", str(half_even_twin), ranges)
    sum_scale = ref_qparams(-3.0, 3.0, "npu-pow2")[0]
    fine = {name: ref_qparams(-amax, amax, "npu-pow2")[0] for name, amax in ranges.items()}
    assert fine["skip"] < sum_scale and fine["score"] < sum_scale
    # half up: both Add inputs on the sum's grid; the Resize's own input keeps its scale
    assert _q_scale(up, "skip") == sum_scale
    assert _q_scale(up, "up1") == sum_scale
    assert _q_scale(up, "score") == fine["score"]
    assert _q_scale(up, "fuse") == sum_scale
    # ties to even: the table's scales, as before
    assert _q_scale(even, "skip") == fine["skip"]
    assert _q_scale(even, "up1") == fine["score"]  # a Resize output keeps its input's scale
    # everything else is the same in both models
    others = {n.input[0] for n in up.graph.node if n.op_type == "QuantizeLinear"} - {"skip", "up1"}
    assert others and all(_q_scale(up, t) == _q_scale(even, t) for t in others)
    # one initializer holds the sum's scale and its inputs': the scale search moves them together
    assert sum_aligned(up) == {"skip": "fuse", "up1": "fuse"} and sum_aligned(even) == {}
    (group,) = [g for g in scale_groups(up, table) if "fuse" in g.tensors]
    assert sorted(group.tensors) == ["fuse", "skip", "up1"] and group.entries == ("fuse",)


def test_inputs_coarser_than_the_sum_stay(tmp_path):
    q, _ = _emit(tmp_path, "npu-pow2", {"skip": 4.0, "score": 0.3, "fuse": 3.0})
    assert _q_scale(q, "skip") == ref_qparams(-4.0, 4.0, "npu-pow2")[0]  # coarser: the Add shifts it left, exactly
    assert _q_scale(q, "up1") == ref_qparams(-3.0, 3.0, "npu-pow2")[0]


def test_which_targets_align():
    assert applies(get_target("npu-pow2"))
    assert not applies(get_target("ort-cpu")) and not applies(get_target("tensorrt"))


def _graph(nodes, extra_outputs=()):
    inits = [init(f"w{i}", np.ones((2, 2, 1, 1))) for i in range(4)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", *extra_outputs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_which_inputs_move():
    """A Conv output read by the Add alone moves; read twice, made by a MaxPool or a nearest Resize, or a graph
    output, it stays; a Conv fused with its Relu moves with the Relu output's scale."""
    conv = lambda i, src, out: helper.make_node("Conv", [src, f"w{i}"], [out])  # noqa: E731
    nodes = [
        conv(0, "x", "a"),                                   # read only by the first Add: moves
        conv(1, "x", "b"), helper.make_node("Relu", ["b"], ["br"]),  # fused Conv + Relu, read only by the Add
        helper.make_node("Add", ["a", "br"], ["s1"]),
        conv(2, "s1", "c"),                                  # read by the Add and by the next Conv: stays
        conv(3, "c", "d"),
        helper.make_node("MaxPool", ["s1"], ["m"], kernel_shape=[1, 1]),  # no accumulator: stays
        helper.make_node("Add", ["c", "m"], ["s2"]),
        helper.make_node("Add", ["s2", "d"], ["y"]),         # d is also a graph output: stays
    ]
    model = _graph(nodes, extra_outputs=("d",))
    fine, coarse = (2.0 ** -6, 0), (2.0 ** -3, 0)
    params = {t: fine for t in ("a", "b", "br", "c", "d", "m")} | {t: coarse for t in ("s1", "s2", "y")}
    inherited = {"b": "br", "m": "s1"}
    assert sum_aligned_inputs(model, params, inherited) == {"a": "s1", "br": "s1"}
