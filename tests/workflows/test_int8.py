"""The one-shot flow: collect -> recover -> emit; what ran is recorded; nothing is written when a step fails."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fcnquant.calibrate.table import build_table
from fcnquant.quantize import QuantConfig
from fcnquant.data import DataConfig, open_dataset
from fcnquant.errors import CalibrationError, FcnquantError
from fcnquant.execute import RunConfig
from fcnquant.quantize import quantize_model
from fcnquant.recover.scale_search import ScaleSearchOptions
from fcnquant.workflows import Outputs, RecoverOptions
from fcnquant.workflows import calibrate as run_workflow
from fcnquant.recover.plan import RECOVERY_METADATA_KEY, read_recovery, resolve_plan
from tests.calibrate.helpers import tiny_fcn
from tests.recover.helpers import branching_model


def calibrate(model, root, *, num_images, size=None, preset=None, target="ort-cpu", out=None, per_channel=True,
              recover=False, scale_search_options=None, progress=False, **switches):
    """The int8 workflow with the plan resolved from ``recover`` and single-pass ``switches``, as the CLI does."""
    plan = resolve_plan(target, per_channel, recover, emits=out is not None, **switches)
    return run_workflow(model, DataConfig(root, "train", preset=preset, size=size, num_images=num_images),
                        QuantConfig(target=target, per_channel=per_channel), RunConfig(progress=progress), plan,
                        outputs=Outputs(model=out),
                        recover=RecoverOptions(scale_search=ScaleSearchOptions(**(scale_search_options or {}))))


@pytest.fixture(scope="module")
def env(tmp_path_factory, synthetic_voc):
    fpath = tmp_path_factory.mktemp("flow") / "float.onnx"
    onnx.save(branching_model(), str(fpath))
    return synthetic_voc(train=6, val=2, size=32, seed=5), fpath


@pytest.mark.parametrize("form,passes", [("fast", 0), ("sequential", 2)])  # fast: from the calibration pass
def test_recovery_is_recorded_and_biases_change(env, tmp_path, form, passes):
    voc, fpath = env
    out = tmp_path / "m.int8.onnx"
    res = calibrate(fpath, voc, num_images=6, size=32, preset="awesome", target="npu-pow2", out=out,
                    per_channel=False, recover=True, equalize=False, scale_search=False, progress=False,
                    bias_correction_error="weights", bias_correction_form=form)
    assert res.plan.names() == ["pow2-by-error", "bias-correction"]
    q = onnx.load(str(out))
    rec = read_recovery(q)
    assert rec["passes"] == ["pow2-by-error", "bias-correction"]
    assert rec["bias_correction"]["layers"] == 3 and rec["bias_correction"]["passes"] == passes
    assert rec["bias_correction"]["form"] == form
    assert rec["pow2_rounding"] == "error" and res.table.pow2_rounding == "error"
    plain = tmp_path / "plain.onnx"
    table = res.table
    quantize_model(fpath, table, plain, QuantConfig(target="npu-pow2", per_channel=False, pow2_rounding="error"))
    p = onnx.load(str(plain))
    assert RECOVERY_METADATA_KEY not in {m.key for m in p.metadata_props}
    b_plain = {t.name: numpy_helper.to_array(t) for t in p.graph.initializer if t.name.endswith("_quantized")}
    b_rec = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_quantized")}
    changed = [n for n in b_plain if n.startswith("b") and not np.array_equal(b_plain[n], b_rec[n])]
    assert changed  # the corrected biases differ from plain emission; the weights do not
    for n in b_plain:
        if n.startswith("w"):
            assert np.array_equal(b_plain[n], b_rec[n]), n


def test_a_failing_step_leaves_nothing(env, tmp_path, monkeypatch):
    voc, fpath = env
    import fcnquant.recover.bias_correction as bc

    def boom(*a, **k):
        raise FcnquantError("planted failure")

    monkeypatch.setattr(bc, "correct_biases", boom)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(FcnquantError, match="planted"):
        calibrate(fpath, voc, num_images=4, size=32, preset="awesome", target="tensorrt", out=out,
                  bias_correction=True, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_passes_that_make_a_model_need_out(env):
    voc, fpath = env
    with pytest.raises(FcnquantError, match="give `out`"):
        calibrate(fpath, voc, num_images=2, size=32, bias_correction=True, progress=False)
    res = calibrate(fpath, voc, num_images=2, size=32, target="npu-pow2", recover=True, progress=False)
    assert res.quantize is None and res.table.pow2_rounding == "error"


def test_cli_calibrate_out_with_emission_options(env, tmp_path):
    voc, fpath = env
    out = tmp_path / "m.int8.onnx"
    cmd = [sys.executable, "-m", "fcnquant", "calibrate", str(fpath), "--data", str(voc), "--size", "32",
           "--num-images", "4", "--target", "npu-pow2", "--per-tensor", "--recover", "--no-equalize",
           "--scale-search", "--exclude", "conv3", "--out", str(out), "--out-table", str(tmp_path / "t.json"), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "recovery: power-of-two scales by error, power-of-two scales by output error (" in r.stdout
    assert ", bias correction (2 layers" in r.stdout
    q = onnx.load(str(out))
    meta = {m.key: m.value for m in q.metadata_props}
    assert meta["fcnquant.per_channel"] == "false"
    conv3 = next(n for n in q.graph.node if n.name == "conv3")
    assert conv3.input[1] == "w3"  # excluded: float weights
    assert json.loads(meta[RECOVERY_METADATA_KEY])["passes"] == ["pow2-by-error", "pow2-by-output", "bias-correction"]


def test_scale_search_in_the_flow_emits_its_table(env, tmp_path):
    voc, fpath = env
    out = tmp_path / "s.int8.onnx"
    res = calibrate(fpath, voc, num_images=4, size=32, preset="awesome", target="npu-pow2", out=out,
                    per_channel=False, recover=True, equalize=False, bias_correction=False, progress=False,
                    scale_search=True, scale_search_options={"images": 2})
    assert res.plan.names() == ["pow2-by-error", "pow2-by-output"]
    rec = read_recovery(onnx.load(str(out)))["scale_search"]
    assert rec["images"] == 2 and rec["groups"] >= 3
    assert rec["output_snr_db"]["after"] >= rec["output_snr_db"]["before"]
    q = onnx.load(str(out))
    scales = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in q.graph.initializer}
    for c in rec["changes"]:
        assert scales[c["init"]] == c["new"] == res.table.tensors[c["entries"][0]].scale
    with pytest.raises(FcnquantError, match="power-of-two target"):
        calibrate(fpath, voc, num_images=2, size=32, target="ort-cpu", out=tmp_path / "x.onnx",
                  scale_search=True, progress=False)


def test_auto_bias_correction_keeps_the_variant_with_the_smaller_output_error(env, tmp_path):
    from fcnquant.recover.scale_search import output_error

    voc, fpath = env
    out = {}
    for mode in ("auto", "weights", "accumulated"):
        out[mode] = tmp_path / f"{mode}.onnx"
        res = calibrate(fpath, voc, num_images=4, size=32, preset="awesome", target="npu-pow2",
                        out=out[mode], per_channel=False, recover=True, equalize=False, scale_search=False,
                        bias_correction_error=mode, progress=False)
        assert res.plan.bias_correction_error == mode
    rec = read_recovery(onnx.load(str(out["auto"])))["bias_correction"]
    ds = open_dataset(voc, "train")
    ids = DataConfig(ds, num_images=4).choose(ds, progress=False)
    errs = output_error([out["weights"], out["accumulated"]], fpath,
                        DataConfig(ds, ids=ids, preset="awesome", size=32), RunConfig(progress=False), images=None)
    assert rec["output_mse"] == pytest.approx({"weights": errs[0], "accumulated": errs[1]}, rel=1e-6)
    assert rec["error"] == ("weights" if errs[0] <= errs[1] else "accumulated")
    best = out[rec["error"]]
    ints = [{t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer if t.data_type == 6}
            for p in (out["auto"], best)]
    assert ints[0].keys() == ints[1].keys() and all(np.array_equal(ints[0][k], ints[1][k]) for k in ints[0])
    assert resolve_plan("npu-pow2", recover=True).bias_correction_error == "weights"  # "auto" is opt-in
    assert resolve_plan("npu-pow2", recover=True, bias_correction_error="auto").bias_correction_error == "auto"


def test_explicit_weight_scales_are_used(env, tmp_path):
    voc, fpath = env
    res = calibrate(fpath, voc, num_images=2, size=32, target="tensorrt", progress=False)
    w1 = numpy_helper.to_array(next(t for t in onnx.load(str(fpath)).graph.initializer if t.name == "w1"))
    scales = np.abs(w1).reshape(6, -1).max(axis=1) / 100.0  # larger than max/127: every weight fits
    out = tmp_path / "q.onnx"
    quantize_model(fpath, res.table, out, QuantConfig(target="tensorrt"), weight_scales={"w1": (scales, 0)})
    q = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w1_quantized")
    np.testing.assert_array_equal(inits[dq.input[1]], scales.astype(np.float32))
    np.testing.assert_array_equal(inits["w1_quantized"],
                                  np.clip(np.round(w1 / scales.astype(np.float32)[:, None, None, None]), -127, 127))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny FCN of the collection tests (:func:`tests.calibrate.helpers.tiny_fcn`)."""
    return tiny_fcn(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def voc(synthetic_voc):
    """The train split (7 images) of the collection tests' synthetic VOC set."""
    return open_dataset(synthetic_voc(train=7, val=1, size=40, seed=3), "train")


def test_calibrate_workflow_returns_table_and_stats(model, voc):
    from fcnquant.quantize import QuantConfig
    from fcnquant.workflows import calibrate

    quiet = RunConfig(progress=False)
    flow = calibrate(model, DataConfig(voc.root, "train", num_images=3),
                     QuantConfig(method="percentile", params={"percentile": 99.0}), quiet)
    table, stats = flow.table, flow.stats
    assert len(table.image_ids) == 3 and table.method == "percentile" and table.params["percentile"] == 99.0
    assert table.to_dict()["tensors"] == build_table(stats, "percentile", percentile=99.0).to_dict()["tensors"]
    with pytest.raises(CalibrationError, match="bogus"):  # refused before any inference
        calibrate(model, DataConfig(voc.root, "train"), QuantConfig(params={"bogus": 1}), quiet)


def test_calibrate_workflow_out_emits_the_int8_model(model, voc, tmp_path):
    import onnx

    from fcnquant.quantize import QuantConfig
    from fcnquant.workflows import Outputs, calibrate

    table = calibrate(model, DataConfig(voc.root, "train", num_images=2),
                      QuantConfig(method="minmax", target="tensorrt"), RunConfig(progress=False),
                      outputs=Outputs(model=tmp_path / "m.int8.onnx")).table
    q = onnx.load(str(tmp_path / "m.int8.onnx"))
    zero_points = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # tensorrt: zp 0
    scales = {onnx.numpy_helper.to_array(i).item() for i in q.graph.initializer
              if i.name.endswith("_scale") and onnx.numpy_helper.to_array(i).size == 1}
    assert any(abs(s - e.scale) <= 1e-7 * e.scale for e in table.tensors.values() for s in scales)


def test_fast_bias_correction_from_the_collection_pass_equals_its_own_pass(env, tmp_path):
    """The flow collects the fast form's tap means in the calibration pass (no pass of its own): the corrected
    biases equal those of correct_biases running its own float pass on the flow's uncorrected model."""
    from fcnquant.recover.bias_correction import BiasCorrectionOptions, correct_biases

    voc, fpath = env
    kw = dict(num_images=6, size=32, preset="awesome", target="npu-pow2", per_channel=False, recover=True,
              equalize=False, scale_search=False, progress=False)
    fast = calibrate(fpath, voc, out=tmp_path / "fast.onnx", **kw)
    plain = calibrate(fpath, voc, out=tmp_path / "plain.onnx", bias_correction=False, **kw)
    assert fast.recovery["bias_correction"]["passes"] == 0  # the calibration pass gave the statistics
    data = DataConfig(voc, "train", preset="awesome", size=32, ids=tuple(fast.stats.image_ids))
    own = correct_biases(tmp_path / "plain.onnx", fpath, data, RunConfig(progress=False),
                         BiasCorrectionOptions(form="fast"))
    assert own.passes == 1 and plain.plan.bias_correction is False
    q = onnx.load(str(tmp_path / "fast.onnx"))
    ints = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    assert ints and all(np.array_equal(v, numpy_helper.to_array(next(
        t for t in own.model.graph.initializer if t.name == k))) for k, v in ints.items())
