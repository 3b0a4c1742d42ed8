"""Bias correction: every corrected layer's mean error cancelled, planted shifts removed exactly, schedules agree."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fcnquant.calibrate import build_table, collect_stats
from fcnquant.data import DataConfig, get_preset, iter_batches, open_dataset
from fcnquant.execute import LocalExecutor, RunConfig
from fcnquant.quantize import QuantConfig, quantize_model
from fcnquant.recover import BiasCorrectionOptions, correct_biases
from fcnquant.recover.bias_correction import dependency_levels, find_targets
from fcnquant.runtime import make_session, with_outputs
from tests.recover.helpers import branching_model, brute_conv_mean

QUIET = RunConfig(progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    tmp = tmp_path_factory.mktemp("bc")
    ds = open_dataset(synthetic_voc(train=6, val=1, size=32, seed=5), "train")
    fpath = tmp / "float.onnx"
    onnx.save(branching_model(), str(fpath))
    ids = list(ds.ids)
    stats = collect_stats(fpath, calib(ds, ids), QUIET)
    table = build_table(stats, "minmax", "npu-pow2")
    qpath = tmp / "q.onnx"
    quantize_model(fpath, table, qpath, QuantConfig(target="npu-pow2", per_channel=False))
    return ds, ids, fpath, qpath


def calib(ds, ids) -> DataConfig:
    """The calibration images of these tests: ``ids`` of ``ds``, preset awesome at 32x32."""
    return DataConfig(root=ds, ids=tuple(ids), preset="awesome", size=32)


def correct(qmodel, fpath, ds, ids, run=QUIET, **options):
    """The sequential form (the reference these tests check) unless ``options`` name another."""
    options.setdefault("form", "sequential")
    return correct_biases(qmodel, fpath, calib(ds, ids), run, BiasCorrectionOptions(**options))


def conv_means(model, ds, ids, names):
    """Independent: onnxruntime with the tensors exposed, numpy means per channel over all images."""
    sess = make_session(with_outputs(model, names).SerializeToString())
    preset = get_preset("awesome", size=32)
    acc = {n: [] for n in names}
    for b in iter_batches(ds, preset, ids, 1, with_masks=False):
        for n, v in zip(names, sess.run(names, {"input": b.images})):
            acc[n].append(v.astype(np.float64))
    return {n: np.concatenate(v).mean(axis=(0, 2, 3)) for n, v in acc.items()}


def bias(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def test_corrected_layers_have_zero_mean_error(setup):
    ds, ids, fpath, qpath = setup
    res = correct(qpath, fpath, ds, ids, error="accumulated", skip_logits=False)
    assert [layer.node for layer in res.layers] == ["conv1", "conv2", "conv3"]
    assert res.skipped == (("conv4", "has no int32 bias (a Conv without bias, or a float bias)"),)
    skipping = correct(qpath, fpath, ds, ids)
    assert [layer.node for layer in skipping.layers] == ["conv1", "conv2", "conv3"]  # c2, c3 feed a Relu
    assert skipping.skipped == (("conv4", "scores classes (its output reaches the logits through linear ops only)"),)
    names = ["c1", "c2", "c3"]
    f = conv_means(onnx.load(str(fpath)), ds, ids, names)
    before = conv_means(onnx.load(str(qpath)), ds, ids, names)
    after = conv_means(res.model, ds, ids, names)
    targets, _ = find_targets(res.model, onnx.load(str(fpath)))
    for t in targets:
        err_before = np.abs(before[t.output] - f[t.output])
        err_after = np.abs(after[t.output] - f[t.output])
        assert (err_after <= t.bias_scale / 2 + 1e-6).all(), t.node
        assert err_before.max() > 3 * err_after.max(), t.node  # there was something to correct
    # the recorded errors are the ones measured before each layer's correction (conv1 has nothing upstream)
    assert res.layers[0].max_abs_error == pytest.approx(np.abs(before["c1"] - f["c1"]).max(), rel=1e-6)


@pytest.mark.parametrize("error", ["accumulated"])  # "weights" cancels weight rounding only, by design
def test_planted_shift_is_removed_exactly(setup, error):
    ds, ids, fpath, qpath = setup
    q = onnx.load(str(qpath))
    target = next(t for t in find_targets(q, onnx.load(str(fpath)))[0] if t.node == "conv1")
    planted = onnx.ModelProto()
    planted.CopyFrom(q)
    init = next(t for t in planted.graph.initializer if t.name == target.bias_init)
    shift = np.array([40, -25, 7, 0, -90, 13], np.int32)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + shift, init.name))
    clean = correct(q, fpath, ds, ids, error=error).model
    fixed = correct(planted, fpath, ds, ids, error=error).model
    targets, _ = find_targets(clean, onnx.load(str(fpath)))
    for t in targets:
        assert np.array_equal(bias(clean, t.bias_init), bias(fixed, t.bias_init)), t.node


@pytest.mark.parametrize("error", ["weights", "accumulated"])
def test_levels_and_sequential_schedules_agree(setup, error):
    ds, ids, fpath, qpath = setup
    lv = correct(qpath, fpath, ds, ids, error=error)
    sq = correct(qpath, fpath, ds, ids, schedule="sequential", error=error)
    extra = 1 if error == "accumulated" else 0  # the float pass
    assert lv.passes == extra + 2 and sq.passes == extra + 3  # conv2 and conv3 share the second pass
    assert [layer.level for layer in lv.layers] == [1, 2, 2]
    for t in find_targets(lv.model, onnx.load(str(fpath)))[0]:
        assert np.array_equal(bias(lv.model, t.bias_init), bias(sq.model, t.bias_init)), t.node


def test_dependency_levels_follow_every_path():
    m = branching_model()
    assert dependency_levels(m, ["c1", "c2", "c3", "output"]) == {"c1": 1, "c2": 2, "c3": 2, "output": 3}
    assert dependency_levels(m, ["c2", "c3"]) == {"c2": 1, "c3": 1}


def test_bad_schedule_and_no_images(setup):
    from fcnquant.errors import FcnquantError

    ds, ids, fpath, qpath = setup
    with pytest.raises(FcnquantError, match="schedule"):
        correct(qpath, fpath, ds, ids, schedule="fast")
    with pytest.raises(FcnquantError, match="at least one"):
        correct(qpath, fpath, ds, [])


def test_weight_error_mode_cancels_the_rounding_shift_of_the_first_layer(setup):
    """conv1 reads the int8 model's dequantized input image: after correction its mean output equals that of the
    float weights and bias on the same input (a numpy convolution), to half a bias step."""
    ds, ids, fpath, qpath = setup
    res = correct(qpath, fpath, ds, ids)  # error="weights"
    fm, q = onnx.load(str(fpath)), onnx.load(str(qpath))
    x_dq = next(n for n in q.graph.node if n.name == "conv1").input[0]
    assert x_dq != "input"
    sess = make_session(with_outputs(res.model, [x_dq]).SerializeToString())
    xs = [sess.run([x_dq], {"input": b.images})[0]
          for b in iter_batches(ds, get_preset("awesome", size=32), ids, 1, with_masks=False)]
    ref = brute_conv_mean(np.concatenate(xs).astype(np.float64), bias(fm, "w1").astype(np.float64),
                          (1, 1, 1, 1), (1, 1), (1, 1)) + bias(fm, "b1")
    got = conv_means(res.model, ds, ids, ["c1"])["c1"]
    before = conv_means(q, ds, ids, ["c1"])["c1"]
    t = next(t for t in find_targets(res.model, fm)[0] if t.node == "conv1")
    assert (np.abs(got - ref) <= t.bias_scale / 2 + 1e-6).all()
    assert np.abs(before - ref).max() > 2 * np.abs(got - ref).max()


def test_ort_cpu_layers_with_folded_relus_are_found(setup, tmp_path):
    """onnxruntime folds a Relu into the uint8 zero point and renames the Conv's output: matched by node name."""
    ds, ids, fpath, _ = setup
    stats = collect_stats(fpath, calib(ds, ids), QUIET)
    q = tmp_path / "q.ort.onnx"
    quantize_model(fpath, build_table(stats, "minmax", "ort-cpu"), q, QuantConfig(target="ort-cpu"))
    qm = onnx.load(str(q))
    assert next(n for n in qm.graph.node if n.name == "conv1").output[0] != "c1"  # renamed by the Relu folding
    res = correct(q, fpath, ds, ids)
    assert [layer.node for layer in res.layers] == ["conv1", "conv2", "conv3"]
    acc = correct(q, fpath, ds, ids, error="accumulated")
    assert [layer.node for layer in acc.layers] == ["conv1", "conv2", "conv3"]


@pytest.mark.parametrize("layer,x_name,w,b,pads", [("conv1", "input", "w1", "b1", (1, 1, 1, 1)),
                                                   ("conv3", "r1", "w3", "b3", (1, 1, 1, 1)),
                                                   ("conv2", "r1", "w2", "b2", (0, 0, 0, 0))])
def test_rounding_mode_cancels_the_input_rounding_too(setup, layer, x_name, w, b, pads):
    """error="weights+rounding": the corrected int8 layer's mean output equals the float weights and bias applied
    to the int8 model's own *unquantized* input tensor (minmax table, nothing clipped), by a numpy convolution,
    to half a bias step; in the weights mode it is matched against the dequantized input instead."""
    ds, ids, fpath, qpath = setup
    fm = onnx.load(str(fpath))
    res = correct(qpath, fpath, ds, ids, error="weights+rounding", schedule="sequential")
    sess = make_session(with_outputs(res.model, [x_name]).SerializeToString())
    xs = np.concatenate([sess.run([x_name], {"input": b_.images})[0]
                         for b_ in iter_batches(ds, get_preset("awesome", size=32), ids, 1, with_masks=False)])
    ref = brute_conv_mean(xs.astype(np.float64), bias(fm, w).astype(np.float64), pads, (1, 1), (1, 1)) + bias(fm, b)
    out = next(n for n in res.model.graph.node if n.name == layer).output[0]
    got = conv_means(res.model, ds, ids, [out])[out]
    t = next(t for t in find_targets(res.model, fm)[0] if t.node == layer)
    assert (np.abs(got - ref) <= t.bias_scale / 2 + 1e-6).all()
    same = correct(qpath, fpath, ds, ids, error="weights+rounding")
    assert all(np.array_equal(bias(same.model, i.name), bias(res.model, i.name))
               for i in res.model.graph.initializer if i.data_type == 6)  # levels == sequential


@pytest.mark.parametrize("error", ["weights", "accumulated", "weights+rounding"])
def test_three_shards_give_the_model_of_one_pass(setup, error):
    """The passes run as shards (LocalExecutor(shards=3): 2 images each) and merge bit for bit: the corrected model
    and the reported errors equal those of one pass over the images."""
    ds, ids, fpath, qpath = setup
    one = correct(qpath, fpath, ds, ids, error=error)
    three = correct(qpath, fpath, ds, ids, run=LocalExecutor(shards=3, progress=False), error=error)
    assert three.model.SerializeToString() == one.model.SerializeToString()
    assert [layer.to_dict() for layer in three.layers] == [layer.to_dict() for layer in one.layers]
    assert three.passes == one.passes and three.images == one.images == len(ids)

