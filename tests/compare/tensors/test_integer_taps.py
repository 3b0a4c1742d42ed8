"""Drift read at a QDQ model's integer tensors: the values equal the DequantizeLinear outputs bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.compare.drift.measure import DriftSpec, drift_sums
from fcnquant.compare.tensors.integer_taps import plan_taps
from fcnquant.compare.tensors.pairing import pair_tensors
from fcnquant.data import builtin_dataset, open_dataset, preset_for_session
from fcnquant.demo_models import demo_model_path
from fcnquant.runtime import make_session, with_outputs


def test_taps_equal_the_dequantize_outputs_of_onnxruntime(demo_int8):
    fm, qm = onnx.load(str(demo_model_path("fcn8s"))), onnx.load(str(demo_int8.model))
    names = [p.quant_name for p in pair_tensors(fm, qm).measured]
    taps = plan_taps(qm, names)
    assert len(taps.dequant) == len(names) > 10  # every paired activation of this model ends in a DQ
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    sess = make_session(with_outputs(qm, list(dict.fromkeys(names + taps.exposed))).SerializeToString())
    inp = sess.get_inputs()[0].name
    want = dict(zip(names, sess.run(names, {inp: x})))
    got = taps.values(dict(zip(taps.exposed, sess.run(taps.exposed, {inp: x}))))
    for n in names:
        value = got[n].dequantize() if hasattr(got[n], "dequantize") else got[n]
        assert value.dtype == np.float32 and np.array_equal(value, want[n]), n


def test_drift_with_integer_taps_is_the_same(demo_int8):
    """Accumulated (the quantized model) and isolated (the rewrite, outputs retargeted to the integer tensors).

    The values are the same bits (test above); the sums come from another compiled loop (integer codes in), whose
    float64 additions the compiler may order differently: equal to rounding (here they were equal bit for bit)."""
    f = demo_model_path("fcn8s")
    ds = open_dataset(builtin_dataset(progress=False), "val")
    pre = preset_for_session(make_session(f), None)
    kw = dict(progress=False, threads=1)
    a = drift_sums(f, demo_int8.model, ds, pre, ds.ids[:3], DriftSpec(integer_taps=True), **kw).result()
    b = drift_sums(f, demo_int8.model, ds, pre, ds.ids[:3], DriftSpec(integer_taps=False), **kw).result()
    assert len(a.accumulated) > 10 and len(a.isolated) == len(a.accumulated)
    for side in ("accumulated", "isolated"):
        for name, m in getattr(a, side).items():
            ref = getattr(b, side)[name]
            assert m.count == ref.count and m.max_abs == ref.max_abs, (side, name)
            for key in ("cosine", "snr_db", "mse", "rel_l2"):
                assert getattr(m, key) == pytest.approx(getattr(ref, key), rel=1e-12), (side, name, key)


def test_per_axis_dequantize_by_hand():
    """A per-channel (axis 1) uint8 DQ after a Q: the taps rebuild it as onnxruntime's DequantizeLinear does."""
    scale = np.array([0.5, 0.25, 2.0], np.float32)
    zp = np.array([3, 128, 0], np.uint8)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=1),
             helper.make_node("Identity", ["dq"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    taps = plan_taps(model, ["dq"])
    assert taps.exposed == ["q"]
    x = np.random.default_rng(1).uniform(-3, 300, (1, 3, 2, 2)).astype(np.float32)
    sess = make_session(with_outputs(model, ["q", "dq"]).SerializeToString())
    q, dq = sess.run(["q", "dq"], {"x": x})
    by_hand = (q.astype(np.int32) - zp.reshape(1, 3, 1, 1)).astype(np.float32) * scale.reshape(1, 3, 1, 1)
    assert np.array_equal(taps.values({"q": q})["dq"], dq) and np.array_equal(by_hand, dq)  # per-axis: an array
