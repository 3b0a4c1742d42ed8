"""AdaRound on ONNX models (fcnquant.recover.adaround): the grid, emission and output error on a tiny FCN."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from fcnquant.calibrate.collect import collect_stats
from fcnquant.calibrate.table import build_table
from fcnquant.data import DataConfig, get_preset, iter_batches, open_dataset
from fcnquant.errors import CalibrationError, ModelError
from fcnquant.execute import LocalExecutor, RunConfig
from fcnquant.quantize import QuantConfig, quantize_model
from fcnquant.quantize.weights import symmetric_scales
from fcnquant.recover import AdaRoundOptions, adaround
from tests.recover.helpers import ort_layer

QUIET = RunConfig(progress=False)

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
    return build_table(collect_stats(path, dataset, QUIET), "minmax", target)


def images(dataset, ids=None) -> DataConfig:
    return DataConfig(root=dataset, ids=tuple(ids if ids is not None else dataset.ids))


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
    res = adaround(path, table, images(dataset), QuantConfig(target=target, per_channel=per_channel), QUIET,
                   AdaRoundOptions(iterations=300))
    assert [s.node for s in res.layers] and not res.skipped
    assert len(res.layers) == 4
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    snapped = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    out = res.save_model(tmp_path / "ada.onnx")
    qpath = tmp_path / "ada.int8.onnx"
    quantize_model(out, table, qpath, QuantConfig(target=target, per_channel=per_channel),
                   weight_scales=res.weight_scales, verify_table=False)
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
    res = adaround(path, None, images(dataset), QuantConfig(target="npu-pow2", per_channel=False), QUIET,
                   AdaRoundOptions(iterations=500))
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
    pow2 = QuantConfig(target="npu-pow2", per_channel=False)
    res = adaround(path, table, images(dataset, dataset.ids[:2]), pow2, QUIET,
                   AdaRoundOptions(iterations=50, inputs="sequential"))
    assert res.inputs == "sequential" and len(res.layers) == 4
    assert all(s.loss_adaround <= s.loss_nearest for s in res.layers)
    with pytest.raises(CalibrationError, match="needs the calibration table"):
        adaround(path, None, images(dataset), QuantConfig(target="npu-pow2"), QUIET,
                 AdaRoundOptions(inputs="nearest"))
    other = copy.copy(table)
    other.model_sha256 = "0" * 64
    with pytest.raises(CalibrationError, match="another model"):
        adaround(path, other, images(dataset), QuantConfig(target="npu-pow2"), QUIET,
                 AdaRoundOptions(inputs="nearest"))
    with pytest.raises(ModelError, match="unknown adaround inputs"):
        adaround(path, None, images(dataset), None, QUIET, AdaRoundOptions(inputs="bogus"))


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
    res = adaround(model, None, images(dataset, dataset.ids[:2]),
                   QuantConfig(target="npu-pow2", per_channel=False), QUIET, AdaRoundOptions(iterations=20))
    assert [s.weight for s in res.layers] == ["w1", "w2", "ws2"]
    assert len(res.skipped) == 2 and all("'ws1' is shared" in why for _, why in res.skipped)
    assert {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}["ws1"].tolist() == \
        numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "ws1")).tolist()


def test_excluded_layers_keep_their_weights_and_shards_agree(setup):
    """Nodes ``QuantConfig`` keeps in float are not rounded; the moments of three shards
    (LocalExecutor(shards=3)) give the same layers as one pass."""
    base, path, dataset = setup
    # the parsed model's nodes are unnamed: named Conv_0, Conv_3, Conv_5 (s2), Conv_6 (s1) as emission names them
    quant = QuantConfig(target="npu-pow2", per_channel=False, exclude_nodes=("Conv_5",), exclude_regex=("Conv_[6-9]",))
    one = adaround(path, None, images(dataset), quant, QUIET, AdaRoundOptions(iterations=100))
    assert [s.weight for s in one.layers] == ["w1", "w2"]
    assert sorted(why for _, why in one.skipped) == ["excluded", "excluded"]
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in one.model.graph.initializer}
    assert np.array_equal(got["ws1"], orig["ws1"]) and np.array_equal(got["ws2"], orig["ws2"])
    three = adaround(path, None, images(dataset), quant, LocalExecutor(shards=3, progress=False),
                     AdaRoundOptions(iterations=100))
    for a, b in zip(one.layers, three.layers):
        assert (a.node, a.positions, a.kept_nearest) == (b.node, b.positions, b.kept_nearest)
        assert b.loss_nearest == pytest.approx(a.loss_nearest, rel=1e-12)
        assert b.loss_adaround == pytest.approx(a.loss_adaround, rel=1e-9)
    assert all(np.array_equal(got[w], numpy_helper.to_array(t)) for t in three.model.graph.initializer
               for w in [t.name] if w in ("w1", "w2"))

