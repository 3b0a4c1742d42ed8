"""The isolated-pass rewrite: each layer's own quantization, fed the float model's values, against numpy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.compare.tensors.isolated import build_isolated
from fcnquant.compare.tensors.pairing import pair_tensors
from fcnquant.runtime import make_session, with_outputs

S0, S1, S2 = 0.02, 0.0517, 0.0433  # activation scales (int8, zero point 0); no rounding ties in this data


SW1, SW2 = 0.01, 0.02  # weight scales (int8, per tensor); biases are int32 with scale S_in * S_w


def _int_weights():
    rng = np.random.default_rng(0)
    return (rng.integers(-100, 100, (6, 3)).astype(np.int8), rng.integers(-500, 500, 6).astype(np.int32),
            rng.integers(-100, 100, (4, 6)).astype(np.int8), rng.integers(-500, 500, 4).astype(np.int32))


def _weights():
    """The float weights and biases (what the quantized model's weight DequantizeLinear nodes produce)."""
    q1, qb1, q2, qb2 = _int_weights()
    return (q1.astype(np.float64) * SW1, qb1.astype(np.float64) * S0 * SW1,
            q2.astype(np.float64) * SW2, qb2.astype(np.float64) * S1 * SW2)


def _two_layer(quantized: bool):
    """x -> Conv1 (1x1) -> a -> Conv2 (1x1) -> b; the quantized copy has int8 Q/DQ on x, a and b, int8 weights."""
    q1, qb1, q2, qb2 = _int_weights()
    w1, b1, w2, b2 = _weights()
    inits = []
    nodes = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name: str, qw, scale: float, fw) -> str:
        if not quantized:
            return const(name, fw.astype(np.float32))
        const(f"{name}_q", qw)
        const(f"{name}_s", np.array(scale, np.float32))
        const(f"{name}_z", np.zeros((), qw.dtype))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name]))
        return name

    def qdq(name: str, scale: float) -> str:
        const(f"{name}_s", np.array(scale, np.float32))
        const(f"{name}_z", np.array(0, np.int8))
        nodes.append(helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_d"]))
        return f"{name}_d"

    x = qdq("x", S0) if quantized else "x"
    nodes.append(helper.make_node("Conv", [x, weight("w1", q1[:, :, None, None], SW1, w1[:, :, None, None]),
                                           weight("b1", qb1, S0 * SW1, b1)], ["a"], name="conv1"))
    a = qdq("a", S1) if quantized else "a"
    out = "b" if quantized else "out"
    nodes.append(helper.make_node("Conv", [a, weight("w2", q2[:, :, None, None], SW2, w2[:, :, None, None]),
                                           weight("b2", qb2, S1 * SW2, b2)], [out], name="conv2"))
    if quantized:
        const("b_s", np.array(S2, np.float32))
        const("b_z", np.array(0, np.int8))
        nodes.append(helper.make_node("QuantizeLinear", ["b", "b_s", "b_z"], ["b_q"]))
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["out"]))
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4, 9, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _qdq(v: np.ndarray, s: float) -> np.ndarray:
    """Numpy int8 fake quantization as the ONNX spec defines it (round half to even, saturate)."""
    v = v.astype(np.float32)
    return (np.clip(np.rint(v / np.float32(s)), -128, 127) * np.float32(s)).astype(np.float32)


def _conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 1x1 convolution in float64 (exact for quantized inputs and weights), rounded once to float32."""
    return (np.einsum("oc,nchw->nohw", w, x.astype(np.float64)) + b[None, :, None, None]).astype(np.float32)


def _snr(ref: np.ndarray, test: np.ndarray) -> float:
    r, t = ref.astype(np.float64), test.astype(np.float64)
    return float(10 * np.log10(np.sum(r * r) / np.sum((t - r) ** 2)))


def _run(fm, qm, x):
    pairing = pair_tensors(fm, qm)
    measured = pairing.measured
    plan = build_isolated(qm, measured)
    onnx.checker.check_model(plan.model)
    fs = make_session(with_outputs(fm, [p.float_name for p in measured if p.float_name != "x"]).SerializeToString())
    f_vals = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, {"x": x})))
    f_vals["x"] = x
    qs = make_session(with_outputs(qm, [p.quant_name for p in measured]).SerializeToString())
    q_vals = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, {"x": x})))
    iso = make_session(plan.model.SerializeToString())
    feeds = {k: f_vals[src].astype(dt) for k, (src, dt) in plan.feeds.items()}
    if "x" in {i.name for i in iso.get_inputs()}:
        feeds["x"] = x
    iso_vals = dict(zip([o.name for o in iso.get_outputs()], iso.run(None, feeds)))
    acc = {p.float_name: q_vals[p.quant_name] for p in measured}
    isolated = {p.float_name: iso_vals[plan.outputs[p.float_name]] for p in measured}
    return measured, plan, f_vals, acc, isolated


def test_isolated_and_accumulated_values_match_numpy_fake_quant():
    fm, qm = _two_layer(False), _two_layer(True)
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 7)).astype(np.float32)
    measured, plan, f_vals, acc, isolated = _run(fm, qm, x)
    assert [p.float_name for p in measured] == ["x", "a", "out"]
    w1, b1, w2, b2 = _weights()
    a_float = _conv1x1(x, w1, b1)
    b_float = _conv1x1(a_float, w2, b2)
    a_acc = _qdq(_conv1x1(_qdq(x, S0), w1, b1), S1)
    b_acc = _qdq(_conv1x1(a_acc, w2, b2), S2)
    b_iso = _qdq(_conv1x1(_qdq(a_float, S1), w2, b2), S2)  # layer 2 alone: its input is the float a
    np.testing.assert_allclose(f_vals["a"], a_float, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acc["a"], a_acc, atol=1e-6)
    np.testing.assert_allclose(isolated["a"], a_acc, atol=1e-6)  # layer 1's inputs are the image either way
    np.testing.assert_allclose(acc["out"], b_acc, atol=1e-6)
    np.testing.assert_allclose(isolated["out"], b_iso, atol=1e-6)
    np.testing.assert_array_equal(isolated["x"], _qdq(x, S0))
    assert not np.array_equal(b_acc, b_iso)  # the data does tell the two passes apart
    assert _snr(b_float, isolated["out"]) == pytest.approx(_snr(b_float, b_iso), abs=1e-9)
    # one new graph input per cut tensor that something still reads: only a (b's cut feeds nothing downstream)
    assert sorted(src for src, _ in plan.feeds.values()) == ["a"]


def test_isolated_rewrite_of_fp16_model_is_valid_and_first_layer_matches():
    from onnxruntime.transformers import float16

    fm = _two_layer(False)
    hm = float16.convert_float_to_float16(fm, keep_io_types=True)
    x = np.random.default_rng(6).standard_normal((2, 3, 9, 7)).astype(np.float32)
    measured, plan, f_vals, acc, isolated = _run(fm, hm, x)
    assert [p.float_name for p in measured] == ["x", "a", "out"]
    assert {dt for _, dt in plan.feeds.values()} == {np.dtype(np.float16)}
    np.testing.assert_array_equal(isolated["x"], acc["x"])
    np.testing.assert_array_equal(isolated["a"], acc["a"])  # fed the image only: nothing upstream to remove
    # layer 2 alone = Conv2 on the float16-rounded float activation
    w1, b1, w2, b2 = _weights()
    a16 = f_vals["a"].astype(np.float16).astype(np.float32)
    want = _conv1x1(a16, w2, b2)
    np.testing.assert_allclose(isolated["out"].astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_rewrite_keeps_original_model_untouched():
    qm = _two_layer(True)
    before = qm.SerializeToString()
    build_isolated(qm, pair_tensors(_two_layer(False), qm).measured)
    assert qm.SerializeToString() == before


def test_folded_relu_head_is_fed_the_relu_output(tmp_path):
    """onnxruntime deletes a Relu after a Conv; the cut Conv output is fed the float Relu output and clips the same."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["out"], name="conv_out")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b2")]
    graph = helper.make_graph(nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    fm = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fm.ir_version = 8
    onnx.save(fm, str(tmp_path / "f.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    qm = onnx.load(str(tmp_path / "q.onnx"))
    assert "Relu" not in {n.op_type for n in qm.graph.node}
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    measured, plan, f_vals, acc, isolated = _run(fm, qm, x)
    assert [p.float_name for p in measured] == ["x", "r", "out"]
    assert ("r", np.dtype(np.float32)) in plan.feeds.values()
    # layer r's input is the image, so its isolated value equals the accumulated one
    np.testing.assert_array_equal(isolated["r"], acc["r"])
    assert (isolated["r"] >= 0).all()  # the QuantizeLinear's range does the Relu's clipping
