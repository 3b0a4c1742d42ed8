"""fcnquant tune end to end on the demo fcn8s with one planted noisy layer, against fcnquant.evaluate."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from fcnquant.cli import main
from fcnquant.data import DataConfig
from fcnquant.demo_models import demo_model_path
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig
from fcnquant.quantize import QuantConfig
from fcnquant.tune import FLOAT_LAYERS_KEY, TuneOptions, over_budget_path, tune
from tests.tune.helpers import FAST, PER_TENSOR, PLANTED, float_compute_ops

QUIET = RunConfig(progress=False)


def _tuning_drop(model, out, voc, result):
    data = DataConfig(voc, split="train", ids=result.images.tuning.to_dict()["ids"])
    f = evaluate(model, data, QUIET).miou
    q = evaluate(out, data, QUIET).miou
    return f - q


def _image_confusions(model, voc, ids):
    """Per-image confusion matrices from fcnquant.evaluate, one image at a time: an independent computation."""
    return np.stack([evaluate(model, DataConfig(voc, split="train", ids=[i]), QUIET).confusion for i in ids])


def test_planted_layer_found_in_at_most_three_evaluations(tune_voc, planted_fcn8s, tmp_path):
    out = tmp_path / "p.int8.onnx"
    res = tune(planted_fcn8s, out, TuneOptions(1.0, **FAST), tune_voc, QUIET, PER_TENSOR,
               json_path=tmp_path / "t.json", report=tmp_path / "t.html")
    assert [f.name for f in res.float_layers] == [PLANTED]
    assert len(res.evaluations) <= 3 and not res.over_budget
    assert res.evaluations[0].drop > 1.0  # everything int8 misses the budget because of the planted layer
    # the drops the tuner reports are what fcnquant.evaluate measures on the tuning images
    assert res.tune_drop == pytest.approx(_tuning_drop(planted_fcn8s, out, tune_voc, res), abs=1e-9)
    q = onnx.load(str(out))
    meta = {p.key: p.value for p in q.metadata_props}
    assert json.loads(meta[FLOAT_LAYERS_KEY]) == [PLANTED]
    conv = next(n for n in q.graph.node if n.name == PLANTED)
    assert conv.input[1] in {t.name for t in q.graph.initializer}  # float weights, no DequantizeLinear
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["evaluations"] == len(res.evaluations) and data["float_layers"] == [PLANTED]
    assert data["tune_drop"] == pytest.approx(res.tune_drop, abs=1e-4)
    assert data["report_drop"] is not None
    im = data["images"]
    sets = [set(im[k]["ids"]) for k in ("calibration", "tuning")]
    assert im["calibration"]["count"] == 8 and im["tuning"]["count"] == 16 and not sets[0] & sets[1]
    assert im["reporting"]["split"] == "val" and im["reporting"]["count"] == 6
    page = (tmp_path / "t.html").read_text()
    assert "fcnquant tune" in page and PLANTED in page


def test_budget_already_met_needs_one_evaluation(tune_voc, tmp_path):
    out = tmp_path / "m.int8.onnx"
    res = tune(demo_model_path("fcn8s"), out, TuneOptions(5.0, **FAST), tune_voc, QUIET,
               QuantConfig(target="ort-cpu"))
    assert res.float_layers == () and len(res.evaluations) == 1 and res.ranking is None
    assert res.tune_drop == pytest.approx(_tuning_drop(demo_model_path("fcn8s"), out, tune_voc, res), abs=1e-9)
    assert res.tune_drop <= 5.0 and out.is_file()


def test_impossible_budget_exits_3_and_writes_the_best_model_as_over_budget(tune_voc, planted_fcn8s, tmp_path,
                                                                             capsys):
    out = tmp_path / "x.int8.onnx"
    rc = main(["tune", str(planted_fcn8s), "--max-drop", "-50", "--data", str(tune_voc), "--target", "ort-cpu",
               "--per-tensor", "--out", str(out), "--json", str(tmp_path / "x.json"), "--num-calib", "8",
               "--num-tune", "16", "--rank", "isolated", "--rank-images", "4", "--no-progress"])
    assert rc == 3
    printed = capsys.readouterr()
    err = printed.err
    assert "cannot be met" in err and "over budget" in err
    assert "check (ort-cpu): legal" in printed.out  # float layers are one of ort-cpu's fallbacks
    assert not out.exists()
    best = over_budget_path(out)
    assert best.is_file() and best.name == "x.int8.over-budget.onnx"
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["over_budget"] is True and data["out"] == str(best)
    drops = [e["drop"] for e in data["evaluation_log"]]
    assert data["tune_drop"] == pytest.approx(min(drops), abs=1e-4)


def test_recover_emits_recovered_candidates(tune_voc, planted_fcn8s, tmp_path):
    # the built-in npu-pow2 allows int16 only: a copy of its file that allows float too
    from fcnquant.targets.load import builtin_path

    text = builtin_path("npu-pow2").read_text().replace('fallbacks = ["int16"]', 'fallbacks = ["int16", "float"]')
    assert 'fallbacks = ["int16", "float"]' in text
    (tmp_path / "npu-float.toml").write_text(text)
    out = tmp_path / "r.int8.onnx"
    res = tune(planted_fcn8s, out, TuneOptions(1.0, **FAST), tune_voc, QUIET,
               QuantConfig(target=str(tmp_path / "npu-float.toml"), per_channel=False),
               recover=True)
    assert [f.name for f in res.float_layers] == [PLANTED] and not res.over_budget
    assert res.tune_drop == pytest.approx(_tuning_drop(planted_fcn8s, out, tune_voc, res), abs=1e-9)
    q = onnx.load(str(out))
    meta = {p.key: p.value for p in q.metadata_props}
    rec = json.loads(meta["fcnquant.recovery"])
    assert rec["passes"] == ["pow2-by-error", "bias-correction"] and rec["bias_correction"]["layers"] >= 1
    assert json.loads(meta[FLOAT_LAYERS_KEY]) == [PLANTED]


def test_recovered_candidates_take_the_float_tap_means_of_the_calibration_pass(tune_voc, planted_fcn8s, tmp_path):
    """The fast bias correction of every candidate reads the tap means gathered once in the calibration pass
    (no float pass per candidate), and corrects the biases exactly as its own float pass would."""
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.data import open_dataset
    from fcnquant.targets.load import builtin_path
    from fcnquant.tune.builder import RecoveryBuilder

    text = builtin_path("npu-pow2").read_text().replace('fallbacks = ["int16"]', 'fallbacks = ["int16", "float"]')
    (tmp_path / "npu-float.toml").write_text(text)
    quant = QuantConfig(target=str(tmp_path / "npu-float.toml"), per_channel=False)
    out = tmp_path / "r.int8.onnx"
    res = tune(planted_fcn8s, out, TuneOptions(1.0, **FAST), tune_voc, QUIET, quant, recover=True)
    rec = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["fcnquant.recovery"])
    assert rec["bias_correction"]["passes"] == 0 and rec["bias_correction"]["layers"] >= 1
    # the reference: the same candidate built by a builder whose correction runs its own float pass
    ids = tuple(res.images.calibration.ids)
    stats = collect_stats(planted_fcn8s, DataConfig(tune_voc, split="train", ids=ids), QUIET)
    table = build_table(stats, quant.method, quant.target)
    own = RecoveryBuilder(planted_fcn8s, stats, table, open_dataset(tune_voc, "train"), quant)
    ref = own.build(frozenset(f.name for f in res.float_layers), tmp_path / "ref.int8.onnx")
    assert own.last_recovery["bias_correction"]["passes"] == 1
    ints = lambda m: {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(m)).graph.initializer  # noqa: E731
                      if t.data_type == onnx.TensorProto.INT32}
    got, want = ints(out), ints(ref)
    assert want and got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_fp16_fallback_makes_only_the_float_layer_an_fp16_island(tune_voc, planted_fcn8s, tmp_path):
    out = tmp_path / "h.int8.onnx"
    res = tune(planted_fcn8s, out, TuneOptions(1.0, fallback="fp16", **FAST), tune_voc, QUIET, PER_TENSOR)
    assert [f.name for f in res.float_layers] == [PLANTED] and len(res.evaluations) <= 3
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    inits = {t.name: t.data_type for t in q.graph.initializer}
    conv = next(n for n in q.graph.node if n.name == PLANTED)
    assert inits[conv.input[1]] == onnx.TensorProto.FLOAT16
    fp16_inits = {n for n, t in inits.items() if t == onnx.TensorProto.FLOAT16}
    assert fp16_inits == {conv.input[1], conv.input[2]}  # nothing else turned float16
    casts = [n for n in q.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # into and out of the island: no float16 round trips elsewhere


def test_the_tuning_drop_comes_with_its_bootstrap_interval(tune_voc, planted_fcn8s, tmp_path):
    from fcnquant.tune.confidence import bootstrap_drop, upper_bound

    out = tmp_path / "ci.int8.onnx"
    res = tune(planted_fcn8s, out, TuneOptions(1.0, **FAST), tune_voc, QUIET, PER_TENSOR,
               json_path=tmp_path / "ci.json")
    ids = res.images.tuning.to_dict()["ids"]
    # per-image confusion matrices from fcnquant.evaluate, one image at a time: an independent computation
    per_image = {m: _image_confusions(m, tune_voc, ids) for m in (planted_fcn8s, out)}
    want = bootstrap_drop(per_image[planted_fcn8s], per_image[out])
    assert res.tune_interval == want and want.lo <= res.tune_drop <= want.hi
    assert res.tune_drop == pytest.approx(want.drop, abs=1e-9)
    data = json.loads((tmp_path / "ci.json").read_text())
    assert data["tune_interval"]["lo"] == pytest.approx(want.lo, abs=1e-4) and data["confidence"] is None
    assert "interval" in res.format_table()
    # with a confidence, the search holds the upper bound to the budget: the chosen model's bound is within it
    sure = tune(planted_fcn8s, tmp_path / "sure.onnx", TuneOptions(1.0, confidence=0.9, **FAST), tune_voc, QUIET,
                PER_TENSOR)
    assert not sure.over_budget and sure.confidence == 0.9
    chosen = [e for e in sure.evaluations if e.float_layers and set(e.float_layers) == {f.name for f in
                                                                                         sure.float_layers}]
    assert chosen and all(e.drop <= 1.0 for e in chosen)
    per = {m: _image_confusions(m, tune_voc, ids) for m in (planted_fcn8s, tmp_path / "sure.onnx")}
    assert upper_bound(per[planted_fcn8s], per[tmp_path / "sure.onnx"], 0.9) == \
        pytest.approx(chosen[-1].drop, abs=1e-9)


def test_bias_correction_form_needs_recover(tmp_path, capsys):
    rc = main(["tune", str(demo_model_path("fcn8s")), "--max-drop", "1", "--out", str(tmp_path / "t.onnx"),
               "--bias-correction", "sequential", "--no-progress"])
    assert rc == 2
    assert "--bias-correction chooses the form of --recover's bias correction" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_int16_fallback_leaves_no_float_compute_op_within_the_evaluation_bound(tune_voc, tmp_path):
    """npu-pow2 (int16 its only fallback, the default there): the search holds the agreement objective, escalates
    layers' activations to int16 and keeps every Conv, Add, MaxPool and Resize between DequantizeLinear nodes."""
    out = tmp_path / "i16.int8.onnx"
    res = tune(demo_model_path("fcn8s"), out, TuneOptions(0.0, **FAST), tune_voc, QUIET,
               QuantConfig(target="npu-pow2", per_channel=False), json_path=tmp_path / "i16.json")
    assert res.fallback == "int16" and res.objective == "agreement"
    assert math.ceil(math.log2(res.layers)) + 3 >= len(res.evaluations) == res.to_dict()["evaluations"]
    assert res.evaluations[0].step == "reference" and len(res.evaluations[0].float_layers) == res.layers
    q = onnx.load(str(out if out.exists() else over_budget_path(out)))
    assert float_compute_ops(q) == []
    assert [o.version for o in q.opset_import if o.domain == ""] == [21]
    inits = {t.name: t.data_type for t in q.graph.initializer}
    made_by = {o: n for n in q.graph.node for o in n.output}
    nodes = {n.name: n for n in q.graph.node}
    assert res.float_layers
    for layer in res.float_layers:  # each escalated layer's output is requantized to int16
        last = nodes[layer.nodes[-1]]
        readers = [n for n in q.graph.node if last.output[0] in n.input and n.op_type == "QuantizeLinear"]
        assert readers and all(inits[r.input[2]] == onnx.TensorProto.INT16 for r in readers), layer.name
    assert made_by  # the graph was read
    assert json.loads((tmp_path / "i16.json").read_text())["objective"] == "agreement"


def test_a_fallback_the_target_does_not_allow_is_one_line_and_exit_2(tune_voc, tmp_path, capsys):
    out = tmp_path / "f.int8.onnx"
    rc = main(["tune", str(demo_model_path("fcn8s")), "--max-drop", "1", "--data", str(tune_voc), "--target",
               "npu-pow2", "--fallback", "float", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "npu-pow2 does not allow the float fallback" in err and "Traceback" not in err
    assert not out.exists()
