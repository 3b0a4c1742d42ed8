"""AdaRound: the rounding arithmetic by hand, conv patches against onnxruntime, the optimiser against brute force
over every rounding of a tiny layer, and the ONNX flow (grid, emission, output error) on a tiny FCN."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.calibrate.collect import collect_stats
from fcnquant.calibrate.table import build_table
from fcnquant.data import get_preset, iter_batches, open_dataset
from fcnquant.errors import CalibrationError, ModelError
from fcnquant.quantize import quantize_model
from fcnquant.quantize.weights import symmetric_scales
from fcnquant.recover import adaround
from fcnquant.recover import rounding as rnd
from fcnquant.recover.conv_patches import (GramStats, output_hw, patches, rows_to_weight, spec_from_attributes,
                                           weight_rows)
from fcnquant.recover.layer_rounding import optimize_rounding, quadratic_loss


# --- the arithmetic, hand-worked ---------------------------------------------------------------------------------
def test_rectified_sigmoid_hand_values():
    # sigmoid(0) = 1/2 -> 0.5 * 1.2 - 0.1 = 0.5; sigmoid(log 11) = 11/12 -> 1.0; sigmoid(-log 11) = 1/12 -> 0.0
    h = rnd.rectified_sigmoid(np.array([0.0, math.log(11), -math.log(11), 50.0, -50.0]))
    np.testing.assert_allclose(h, [0.5, 1.0, 0.0, 1.0, 0.0], rtol=0, atol=1e-12)
    # sigmoid(log 3) = 3/4 -> 0.75 * 1.2 - 0.1 = 0.8
    assert rnd.rectified_sigmoid(np.array(math.log(3)))[()] == pytest.approx(0.8, abs=1e-12)


def test_initial_v_inverts_h_on_the_fraction():
    frac = np.array([0.0, 0.1, 0.3, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(rnd.rectified_sigmoid(rnd.initial_v(frac)), frac, rtol=0, atol=1e-12)
    # frac 0.5: (0.5 + 0.1) / 1.2 = 0.5 = sigmoid(0)
    assert rnd.initial_v(np.array(0.5))[()] == pytest.approx(0.0, abs=1e-12)


def test_regularizer_hand_values_and_gradient():
    h = np.array([0.5, 0.0, 1.0, 0.75])
    # beta 2: 1 - 0 + 1 - 1 + 1 - 1 + 1 - 0.5^2 = 1.75
    assert rnd.regularizer(h, 2.0) == pytest.approx(1.75, abs=1e-12)
    # d/dh (1 - (2h - 1)^2) = -4 (2h - 1): at h = 0.75 -> -2
    assert rnd.regularizer_grad(np.array([0.75]), 2.0)[0] == pytest.approx(-2.0, abs=1e-12)
    x = np.array([0.2, 0.4, 0.65, 0.9])
    eps = 1e-6
    for beta in (2.0, 7.5, 20.0):
        numeric = [(rnd.regularizer(x + eps * e, beta) - rnd.regularizer(x - eps * e, beta)) / (2 * eps)
                   for e in np.eye(4)]
        np.testing.assert_allclose(rnd.regularizer_grad(x, beta), numeric, rtol=1e-5, atol=1e-8)


def test_sigmoid_gradient_matches_finite_differences():
    v = np.array([-3.0, -0.7, 0.0, 0.4, 2.2])
    eps = 1e-6
    numeric = (rnd.rectified_sigmoid(v + eps) - rnd.rectified_sigmoid(v - eps)) / (2 * eps)
    np.testing.assert_allclose(rnd.rectified_sigmoid_grad(v), numeric, rtol=1e-6, atol=1e-9)
    assert rnd.rectified_sigmoid_grad(np.array([5.0]))[0] == 0.0  # h clipped at 1: no gradient


def test_beta_schedule():
    # 1000 steps, warm start 20%: no regulariser for steps 0..199, then 20 -> 2 along a half cosine
    assert rnd.beta_at(0, 1000) is None and rnd.beta_at(199, 1000) is None
    assert rnd.beta_at(200, 1000) == pytest.approx(20.0)
    assert rnd.beta_at(600, 1000) == pytest.approx(11.0)  # half way: 2 + 18 * (1 + cos(pi/2)) / 2
    assert rnd.beta_at(1000, 1000) == pytest.approx(2.0)


def test_hard_round_and_nearest():
    floor = np.array([3.0, 3.0, -127.0, 126.0, 127.0])
    v = np.array([-0.01, 0.0, -5.0, 5.0, 5.0])  # h < 0.5, h = 0.5, h = 0, h = 1, h = 1 (clipped at 127)
    np.testing.assert_array_equal(rnd.hard_round(floor, v), [3, 4, -127, 127, 127])
    np.testing.assert_array_equal(rnd.nearest_int(np.array([2.5, 3.5, -0.5, 127.4, -130.0])), [2, 4, -0, 127, -127])


# --- the optimiser against brute force --------------------------------------------------------------------------
def brute_force_best(w, s, a, b, c):
    """Every floor/ceil choice of every weight of one channel: the lowest quadratic loss."""
    floor = np.floor(w / s)
    best = math.inf
    for bits in itertools.product((0.0, 1.0), repeat=w.size):
        wq = s * (floor + np.array(bits).reshape(w.shape))
        best = min(best, quadratic_loss(wq, a, b, c))
    return best


def planted_layer(seed: int = 0, d: int = 10):
    """A channel whose inputs are nearly equal (one common factor): the output depends on the sum of the weights,
    so rounding every weight to nearest adds up the errors, while rounding some up and some down cancels them."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((4000, 1))
    x = z + 0.05 * rng.standard_normal((4000, d))  # patches [P, D]
    s = 0.01
    w = (np.arange(d) % 3 + rng.uniform(0.3, 0.45, d)) * s  # fractions 0.30-0.45: nearest always rounds down
    a = (x.T @ x / len(x))[None]
    rows = w.reshape(1, 1, d)
    b = np.matmul(rows, a)
    c = float(np.sum(np.matmul(rows, a) * rows))
    return rows, np.full((1, 1, 1), s), a, b, c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaround_reaches_the_brute_force_optimum(seed):
    w, s, a, b, c = planted_layer(seed)
    best = brute_force_best(w, s, a, b, c)
    res = optimize_rounding(w, s, a, b, c, iterations=1000)
    nearest = quadratic_loss(s * np.rint(w / s), a, b, c)
    assert nearest > 5 * best  # planted: nearest is far from the best rounding
    assert res.loss_nearest == pytest.approx(nearest, rel=1e-9)
    assert res.loss_adaround == pytest.approx(quadratic_loss(s * res.w_int, a, b, c), rel=1e-6, abs=1e-15)
    assert res.loss_adaround <= best * 1.05 + 1e-12
    assert not res.kept_nearest and res.changed > 0
    assert set(np.unique(res.w_int - np.floor(w / s))) <= {0.0, 1.0}  # only floor or ceil


def test_zero_iterations_is_nearest_and_extremes_stay():
    w, s, a, b, c = planted_layer(0)
    res = optimize_rounding(w, s, a, b, c, iterations=0)
    np.testing.assert_array_equal(res.w_int, np.rint(w / s))
    # a weight at the channel's max |w| (|w / s| = 127 exactly) keeps its integer whatever the loss prefers
    w2 = w.copy()
    w2[0, 0, 0] = -127 * s[0, 0, 0]
    b2 = np.matmul(w2, a)
    res = optimize_rounding(w2, s, a, b2, float(np.sum(b2 * w2)), iterations=300)
    assert res.w_int[0, 0, 0] == -127


# --- conv patches against onnxruntime --------------------------------------------------------------------------
CASES = [
    ("Conv", (6, 3, 3, 3), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), (2, 3, 9, 11)),
    ("Conv", (6, 2, 3, 2), dict(auto_pad="SAME_UPPER", strides=[2, 3], group=2), (1, 4, 10, 11)),
    ("Conv", (6, 2, 3, 2), dict(auto_pad="SAME_LOWER", strides=[2, 3], group=2), (1, 4, 10, 11)),
    ("Conv", (4, 1, 3, 3), dict(auto_pad="VALID", group=4, dilations=[2, 2]), (1, 4, 10, 11)),
    ("ConvTranspose", (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]), (2, 4, 5, 6)),
    ("ConvTranspose", (4, 2, 4, 3), dict(strides=[3, 2], pads=[1, 2, 0, 1], dilations=[1, 2], group=2), (1, 4, 5, 6)),
    ("ConvTranspose", (4, 2, 2, 2), dict(pads=[1, 1, 1, 1]), (1, 4, 5, 6)),
]


def ort_layer(op, wshape, attrs, xshape, w):
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op,wshape,attrs,xshape", CASES)
def test_patches_reproduce_onnxruntime(op, wshape, attrs, xshape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    y = ort_layer(op, wshape, attrs, xshape, w).run(None, {"x": x})[0]
    spec = spec_from_attributes(op, wshape, attrs)
    rows = weight_rows(w.astype(np.float64), spec)
    np.testing.assert_array_equal(rows_to_weight(rows, spec), w)
    g, cpg, _ = rows.shape
    ours = np.matmul(rows, patches(x.astype(np.float64), spec).transpose(0, 2, 1))  # [G, C/g, P]
    ho, wo = output_hw(xshape, spec)
    ours = ours.reshape(g * cpg, xshape[0], ho, wo).transpose(1, 0, 2, 3)
    assert ours.shape == y.shape
    np.testing.assert_allclose(ours, y, rtol=0, atol=1e-5)


def test_moments_give_the_output_error_of_onnxruntime():
    """The quadratic loss from the moments equals the mean squared output error measured with onnxruntime."""
    op, wshape, attrs, xshape = CASES[1]
    rng = np.random.default_rng(3)
    w = rng.standard_normal(wshape).astype(np.float32)
    wq = (w + 0.05 * rng.standard_normal(wshape)).astype(np.float32)
    spec = spec_from_attributes(op, wshape, attrs)
    gram = GramStats(spec, rows_per_chunk=2)  # several chunks per image
    err = []
    for _ in range(3):
        xf = rng.standard_normal(xshape).astype(np.float32)
        xq = (xf + 0.1 * rng.standard_normal(xshape)).astype(np.float32)
        gram.update(xf, xq)
        yf = ort_layer(op, wshape, attrs, xshape, w).run(None, {"x": xf})[0]
        yq = ort_layer(op, wshape, attrs, xshape, wq).run(None, {"x": xq})[0]
        err.append(((yq - yf).astype(np.float64) ** 2).sum(axis=1).ravel())  # summed over channels
    a, b, c = gram.quadratic(weight_rows(w.astype(np.float64), spec))
    loss = quadratic_loss(weight_rows(wq.astype(np.float64), spec), a, b, c)
    assert loss == pytest.approx(np.concatenate(err).mean(), rel=1e-5)


def test_unsupported_layers_are_refused_by_name():
    with pytest.raises(ModelError, match="auto_pad or output_shape"):
        spec_from_attributes("ConvTranspose", (2, 2, 3, 3), {"auto_pad": b"SAME_UPPER"})
    with pytest.raises(ModelError, match="2-D"):
        spec_from_attributes("Conv", (2, 2, 3), {})


# --- the ONNX flow on a tiny FCN -------------------------------------------------------------------------------
TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[1,3,32,32] input) => (float[1,3,32,32] output) {
    c1 = Conv <pads = [1,1,1,1]> (input, w1, b1)
    r1 = Relu (c1)
    p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
    c2 = Conv <pads = [1,1,1,1]> (p1, w2, b2)
    r2 = Relu (c2)
    s2 = Conv (r2, ws2, bs2)
    s1 = Conv (p1, ws1, bs1)
    a = Add (s2, s1)
    output = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (a, , sc)
}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    base = tmp_path_factory.mktemp("ada")
    rng = np.random.default_rng(1)
    model = onnx.parser.parse_model(TINY)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    model.graph.initializer.extend([
        w("w1", 6, 3, 3, 3), w("b1", 6), w("w2", 8, 6, 3, 3), w("b2", 8), w("ws2", 3, 8, 1, 1), w("bs2", 3),
        w("ws1", 3, 6, 1, 1), w("bs1", 3), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    ])
    path = base / "tiny.onnx"
    onnx.save(model, str(path))
    dataset = open_dataset(synthetic_voc(train=6, val=1, size=40, seed=2), "train")
    return base, path, dataset


def table_for(path, dataset, target):
    return build_table(collect_stats(path, dataset, None, progress=False), "minmax", target)


def layer_mse(path, dataset, node_input, node_output, weights):
    """Mean squared error of one Conv's output when its weight is replaced, on the float model's inputs
    (onnxruntime, independent of the moments): the objective of float-input AdaRound."""
    m = onnx.load(str(path))
    conv = next(n for n in m.graph.node if n.output[0] == node_output)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    m.graph.output.append(onnx.ValueInfoProto(name=node_input))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    preset = get_preset("awesome", model_hw=(32, 32))
    xs = [sess.run([node_input], {"input": bt.images})[0] for bt in iter_batches(dataset, preset, None, 1)]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    w_f = inits[conv.input[1]]
    out = []
    for w_q in weights:
        ref = ort_layer("Conv", w_f.shape, attrs, xs[0].shape, w_f)
        alt = ort_layer("Conv", w_f.shape, attrs, xs[0].shape, w_q.astype(np.float32))
        out.append(np.mean([((alt.run(None, {"x": x})[0] - ref.run(None, {"x": x})[0]) ** 2).sum(1).mean()
                            for x in xs]))
    return out


@pytest.mark.parametrize("target,per_channel", [("npu-pow2", False), ("ort-cpu", True)])
def test_adaround_model_is_on_the_grid_and_emits_its_integers(setup, target, per_channel, tmp_path):
    base, path, dataset = setup
    table = table_for(path, dataset, target)
    res = adaround(path, table, target, per_channel=per_channel, dataset=dataset, ids=dataset.ids,
                   iterations=300, progress=False)
    assert [s.node for s in res.layers] and not res.skipped
    assert len(res.layers) == 4
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    snapped = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    out = res.save_model(tmp_path / "ada.onnx")
    qpath = tmp_path / "ada.int8.onnx"
    quantize_model(out, table, qpath, target=target, per_channel=per_channel, weight_scales=res.weight_scales,
                   verify_table=False)
    q = onnx.load(str(qpath))
    qinits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    made_by = {o: n for n in q.graph.node for o in n.output}
    changed = 0
    for node in (n for n in q.graph.node if n.op_type == "Conv"):
        dq = made_by[node.input[1]]
        w_name = next(k for k in orig if dq.input[0].startswith(k + "_"))
        s = symmetric_scales(orig[w_name], 0 if per_channel else None, pow2=(target == "npu-pow2"))
        s = s.reshape(-1, 1, 1, 1) if per_channel else s
        ints = np.rint(snapped[w_name].astype(np.float64) / s)
        # on the grid: each weight is the float32 nearest to s * k for an integer k
        np.testing.assert_array_equal(snapped[w_name], (s.astype(np.float64) * ints).astype(np.float32))
        np.testing.assert_array_equal(qinits[dq.input[0]], ints.astype(np.int8))  # emission reproduces them
        np.testing.assert_allclose(qinits[dq.input[1]].ravel(), np.ravel(s), rtol=1e-6)  # the same scales
        near = np.clip(np.rint(orig[w_name] / s), -127, 127)
        assert set(np.unique(ints - np.floor(orig[w_name] / s))) <= {0.0, 1.0}  # floor or ceil only
        changed += int((ints != near).sum())
    assert changed > 0
    meta = {p.key: p.value for p in res.model.metadata_props}
    assert meta["fcnquant.calibrated_model_sha256"] == table.model_sha256
    assert res.to_dict()["layers"][0]["loss_adaround"] <= res.to_dict()["layers"][0]["loss_nearest"]


def test_adaround_lowers_the_layer_output_error_measured_by_onnxruntime(setup):
    base, path, dataset = setup
    res = adaround(path, None, "npu-pow2", per_channel=False, dataset=dataset, ids=dataset.ids, iterations=500,
                   progress=False)
    w_f = numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer if t.name == "w2"))
    w_ada = numpy_helper.to_array(next(t for t in res.model.graph.initializer if t.name == "w2"))
    s = symmetric_scales(w_f, None, pow2=True)
    w_near = s * np.clip(np.rint(w_f / s), -127, 127)
    mse_near, mse_ada = layer_mse(path, dataset, "p1", "c2", [w_near, w_ada])
    stats = next(x for x in res.layers if x.weight == "w2")
    assert mse_ada < 0.8 * mse_near
    assert stats.loss_nearest == pytest.approx(mse_near, rel=1e-3)
    assert stats.loss_adaround == pytest.approx(mse_ada, rel=1e-3)


def test_sequential_inputs_and_errors(setup, tmp_path):
    base, path, dataset = setup
    table = table_for(path, dataset, "npu-pow2")
    res = adaround(path, table, "npu-pow2", per_channel=False, dataset=dataset, ids=dataset.ids[:2],
                   iterations=50, inputs="sequential", progress=False)
    assert res.inputs == "sequential" and len(res.layers) == 4
    assert all(s.loss_adaround <= s.loss_nearest for s in res.layers)
    with pytest.raises(CalibrationError, match="needs the calibration table"):
        adaround(path, None, "npu-pow2", dataset=dataset, ids=dataset.ids, inputs="nearest", progress=False)
    other = copy.copy(table)
    other.model_sha256 = "0" * 64
    with pytest.raises(CalibrationError, match="another model"):
        adaround(path, other, "npu-pow2", dataset=dataset, ids=dataset.ids, inputs="nearest", progress=False)
    with pytest.raises(ModelError, match="unknown adaround inputs"):
        adaround(path, None, dataset=dataset, ids=dataset.ids, inputs="bogus", progress=False)


def test_shared_weights_are_skipped_by_name(tmp_path, setup):
    base, _, dataset = setup
    text = TINY.replace("s1 = Conv (p1, ws1, bs1)", "s1 = Conv (p1, ws1, bs1)\n    t1 = Conv (p1, ws1, bs1)") \
        .replace("a = Add (s2, s1)", "a0 = Add (s2, s1)\n    a = Add (a0, t1)")
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in [("w1", (6, 3, 3, 3)), ("b1", (6,)), ("w2", (8, 6, 3, 3)), ("b2", (8,)),
                        ("ws2", (3, 8, 1, 1)), ("bs2", (3,)), ("ws1", (3, 6, 1, 1)), ("bs1", (3,))]:
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"))
    res = adaround(model, None, "npu-pow2", per_channel=False, dataset=dataset, ids=dataset.ids[:2],
                   iterations=20, progress=False)
    assert [s.weight for s in res.layers] == ["w1", "w2", "ws2"]
    assert len(res.skipped) == 2 and all("'ws1' is shared" in why for _, why in res.skipped)
    assert {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}["ws1"].tolist() == \
        numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "ws1")).tolist()
