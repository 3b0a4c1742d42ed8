"""The fast bias correction (one pass, every layer at once): its int32 biases equal a numpy brute force, the
sequential form's where both measure the same inputs, and any number of shards gives the model of one."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.calibrate import build_table, collect_stats
from fcnquant.data import get_preset, iter_batches
from fcnquant.execute import LocalExecutor
from fcnquant.quantize import QuantConfig, quantize_model
from fcnquant.runtime import make_session, with_outputs
from fcnquant.recover import BiasCorrectionOptions, correct_biases
from tests.recover.bias_correction.test_correction import QUIET, bias, calib
from tests.recover.bias_correction.test_taps import brute_deconv_mean, brute_grouped_conv_mean


def correct(qmodel, fpath, ds, ids, run=QUIET, **options):
    return correct_biases(qmodel, fpath, calib(ds, ids), run, BiasCorrectionOptions(**options))


def deconv_model(seed: int = 3) -> onnx.ModelProto:
    """input -> conv1 (3x3) -> relu -> conv2 (3x3, group 2, stride 2) -> relu -> up (ConvTranspose 4x4 stride 2,
    group 2) -> relu -> score (1x1, the logits)."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, s=0.4):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    inits = [init("w1", 4, 3, 3, 3), init("b1", 4, s=0.1), init("w2", 6, 2, 3, 3), init("b2", 6, s=0.1),
             init("wu", 6, 2, 4, 4), init("bu", 4, s=0.1), init("ws", 3, 4, 1, 1), init("bs", 3, s=0.1)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2],
                         group=2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("ConvTranspose", ["r2", "wu", "bu"], ["u"], name="up", pads=[1, 1, 1, 1], strides=[2, 2],
                         group=2),
        helper.make_node("Relu", ["u"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "ws", "bs"], ["output"], name="score"),
    ]
    graph = helper.make_graph(nodes, "deconv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def data(synthetic_voc):
    from fcnquant.data import open_dataset

    ds = open_dataset(synthetic_voc(train=6, val=1, size=32, seed=5), "train")
    return ds, list(ds.ids)


def quantized(tmp_path, data, model, per_channel=False, **quant):
    ds, ids = data
    fpath = tmp_path / "float.onnx"
    onnx.save(model, str(fpath))
    table = build_table(collect_stats(fpath, calib(ds, ids), QUIET), "minmax", "npu-pow2")
    qpath = tmp_path / "q.onnx"
    quantize_model(fpath, table, qpath, QuantConfig(target="npu-pow2", per_channel=per_channel, **quant))
    return fpath, qpath


def exposed(model, ds, ids, names):
    """Independent: the tensors ``names`` of ``model`` over every image, from onnxruntime, in float64."""
    sess = make_session(with_outputs(model, [n for n in names if n != "input"]).SerializeToString())
    acc = {n: [] for n in names}
    for b in iter_batches(ds, get_preset("awesome", size=32), ids, 1, with_masks=False):
        got = dict(zip([n for n in names if n != "input"], sess.run([n for n in names if n != "input"],
                                                                    {"input": b.images})))
        got["input"] = b.images
        for n in names:
            acc[n].append(np.asarray(got[n], np.float64))
    return {n: np.concatenate(v) for n, v in acc.items()}


def dequantized_weights(qm, node_name):
    """Independent of the library: the int8 weight of the node through its DequantizeLinear, by hand."""
    node = next(n for n in qm.graph.node if n.name == node_name)
    dq = next(n for n in qm.graph.node if node.input[1] in n.output)
    w, s = bias(qm, dq.input[0]).astype(np.float64), bias(qm, dq.input[1]).astype(np.float64)
    zp = bias(qm, dq.input[2]).astype(np.float64) if len(dq.input) > 2 else 0.0
    if s.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return (w - zp) * s


def expected_bias(qm, fm, node_name, x, mean_shift):
    """The brute-force fast correction of one layer: b_q - round((E[(W_q - W) * patch] + b_q s_b - b) / s_b)."""
    node = next(n for n in qm.graph.node if n.name == node_name)
    bdq = next(n for n in qm.graph.node if node.input[2] in n.output)
    b_q, s_b = bias(qm, bdq.input[0]).astype(np.int64), bias(qm, bdq.input[1]).astype(np.float64)
    fnode = next(n for n in fm.graph.node if n.name == node_name)
    delta = dequantized_weights(qm, node_name) - bias(fm, fnode.input[1]).astype(np.float64)
    err = mean_shift(x, delta) + b_q * s_b - bias(fm, fnode.input[2]).astype(np.float64)
    return (b_q - np.round(err / s_b).astype(np.int64)).astype(np.int32), bdq.input[0]


def test_fast_form_equals_a_numpy_brute_force(tmp_path, data):
    """Each corrected layer's int32 bias equals the brute force over the float model's inputs: a grouped Conv and
    a grouped ConvTranspose (which the sequential form can only correct by their accumulated error) included."""
    ds, ids = data
    fpath, qpath = quantized(tmp_path, data, deconv_model())
    fm, qm = onnx.load(str(fpath)), onnx.load(str(qpath))
    res = correct(qpath, fpath, ds, ids)  # the default: fast, float inputs
    assert res.schedule == "fast" and res.passes == 1
    assert [layer.node for layer in res.layers] == ["conv1", "conv2", "up"]
    xs = exposed(fm, ds, ids, ["input", "r1", "r2"])
    cases = {
        "conv1": (xs["input"], lambda x, d: brute_grouped_conv_mean(x, d, 1, (1, 1, 1, 1), (1, 1), (1, 1))),
        "conv2": (xs["r1"], lambda x, d: brute_grouped_conv_mean(x, d, 2, (1, 1, 1, 1), (2, 2), (1, 1))),
        "up": (xs["r2"], lambda x, d: brute_deconv_mean(x, d, 2, (1, 1, 1, 1), (2, 2), (1, 1), (0, 0))),
    }
    changed = 0
    for name, (x, shift) in cases.items():
        want, init = expected_bias(qm, fm, name, x, shift)
        assert np.array_equal(bias(res.model, init), want), name
        changed += int(np.count_nonzero(want != bias(qm, init)))
    assert changed > 0  # there was something to correct


@pytest.mark.parametrize("per_channel", [False, True])
def test_fast_on_int8_inputs_equals_the_sequential_form_where_they_read_the_same_inputs(tmp_path, data,
                                                                                       per_channel):
    """With conv1 left in float, no corrected layer's int8 input depends on another correction: the sequential
    form (layer by layer on the int8 model) and the fast form on the uncorrected int8 model's inputs measure the
    same tensors and give the same biases. With conv1 quantized, conv1 (first in the order) still agrees."""
    from tests.recover.helpers import branching_model

    ds, ids = data
    fpath, qpath = quantized(tmp_path, data, branching_model(), per_channel, exclude_nodes=["conv1"])
    seq = correct(qpath, fpath, ds, ids, form="sequential")
    fast = correct(qpath, fpath, ds, ids, fast_inputs="int8")
    assert [layer.node for layer in fast.layers] == [layer.node for layer in seq.layers] == ["conv2", "conv3"]
    ints = [i.name for i in seq.model.graph.initializer if i.data_type == TensorProto.INT32]
    assert all(np.array_equal(bias(fast.model, n), bias(seq.model, n)) for n in ints)
    assert any(not np.array_equal(bias(fast.model, n), bias(onnx.load(str(qpath)), n)) for n in ints)

    fpath, qpath = quantized(tmp_path, data, branching_model(), per_channel)
    seq = correct(qpath, fpath, ds, ids, form="sequential")
    fast = correct(qpath, fpath, ds, ids, fast_inputs="int8")
    b1 = next(n for n in onnx.load(str(qpath)).graph.node if n.name == "conv1").input[2]
    b1 = next(n for n in seq.model.graph.node if b1 in n.output).input[0]
    assert np.array_equal(bias(fast.model, b1), bias(seq.model, b1))


@pytest.mark.parametrize("inputs", ["float", "int8"])
def test_three_shards_give_the_model_of_one_pass(tmp_path, data, inputs):
    ds, ids = data
    fpath, qpath = quantized(tmp_path, data, deconv_model())
    one = correct(qpath, fpath, ds, ids, fast_inputs=inputs)
    three = correct(qpath, fpath, ds, ids, run=LocalExecutor(shards=3, progress=False), fast_inputs=inputs)
    assert three.model.SerializeToString() == one.model.SerializeToString()
    assert [layer.to_dict() for layer in three.layers] == [layer.to_dict() for layer in one.layers]


def test_fast_form_takes_the_weight_error_only(tmp_path, data):
    from fcnquant.errors import FcnquantError
    from fcnquant.recover import BiasCorrectionOptions

    with pytest.raises(FcnquantError, match="fast bias correction cancels the weight rounding only"):
        BiasCorrectionOptions(error="accumulated", form="fast")
    with pytest.raises(FcnquantError, match="unknown bias-correction form"):
        BiasCorrectionOptions(form="quick")
    assert BiasCorrectionOptions().resolved_form == "fast"
    assert BiasCorrectionOptions(error="accumulated").resolved_form == "sequential"
