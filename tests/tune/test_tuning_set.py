"""The tuning set's evaluations on the executor: per-image confusions equal fcnquant.evaluate's for any number of
shards, batch size and cache; the options and configs tune refuses."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fcnquant.data import DataConfig, open_dataset, write_synthetic_voc  # noqa: E402
from fcnquant.errors import DataError, FcnquantError  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402
from fcnquant.execute import LocalExecutor, RunConfig  # noqa: E402
from fcnquant.recover.plan import RecoveryPlan  # noqa: E402
from fcnquant.runtime import make_session  # noqa: E402
from fcnquant.tune import TuneOptions, tune  # noqa: E402
from fcnquant.tune.builder import check_plan  # noqa: E402
from fcnquant.tune.tuning_set import TuningSet, cached_slice  # noqa: E402

QUIET = RunConfig(progress=False)
PRESET = dict(preset="awesome", size=32)


def _conv_model(path, batch: int | str = "n"):
    """A 1x1 Conv from 3 channels to 21 logits with a fixed (int) or dynamic (str) batch dimension."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (21, 3, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.5, 21).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "conv1x1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 21, None, None])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", train=1, val=7, size=32, seed=2,
                               progress=False)


def _tuning_set(voc, model, run, **kw) -> TuningSet:
    preset = DataConfig(voc, **PRESET).preset_for(make_session(model))
    ds = open_dataset(voc, "val")
    return TuningSet(ds, ds.ids, preset, run, **kw)


def test_scores_equal_evaluate_for_any_shards_batch_size_and_cache(voc, tmp_path):
    model = _conv_model(tmp_path / "m.onnx")
    ids = open_dataset(voc, "val").ids
    want = np.stack([evaluate(model, DataConfig(voc, ids=[i], **PRESET), QUIET).confusion for i in ids])
    whole = evaluate(model, DataConfig(voc, **PRESET), QUIET)
    runs = {
        "one shard, cached": (QUIET, {}),
        "three shards, cached": (RunConfig(LocalExecutor(shards=3, progress=False)), {}),
        # batches of 3 straddle the shards of 2, 2 and 3 images: those shards read their images again
        "three shards, batches of 3": (RunConfig(LocalExecutor(shards=3, progress=False), batch_size=3), {}),
        "not cached": (QUIET.with_(batch_size=2), {"cache_bytes": 0}),
    }
    for name, (run, kw) in runs.items():
        score = _tuning_set(voc, model, run, **kw).score(model)
        np.testing.assert_array_equal(score.confusions, want, err_msg=name)
        assert score.miou == whole.miou and score.images == len(ids), name


def test_a_fixed_batch_is_padded_and_a_larger_batch_refused(voc, tmp_path):
    dynamic = _conv_model(tmp_path / "dyn.onnx")
    fixed2 = _conv_model(tmp_path / "fixed2.onnx", batch=2)
    want = _tuning_set(voc, dynamic, QUIET).score(dynamic).confusions
    padded = _tuning_set(voc, dynamic, QUIET).score(fixed2).confusions  # batches of 1 padded to 2
    np.testing.assert_array_equal(padded, want)
    fixed1 = _conv_model(tmp_path / "fixed1.onnx", batch=1)
    with pytest.raises(DataError, match="the model takes batches of 1; tune with batch size 1"):
        _tuning_set(voc, dynamic, QUIET.with_(batch_size=2)).score(fixed1)
    with pytest.raises(DataError, match="the model takes batches of 1; tune with batch size 1"):
        _tuning_set(voc, dynamic, QUIET.with_(batch_size=2), cache_bytes=0).score(fixed1)


def test_cached_slice_takes_whole_batches_or_none():
    cache = [SimpleNamespace(ids=["a", "b"]), SimpleNamespace(ids=["c", "d"]), SimpleNamespace(ids=["e"])]
    assert cached_slice(cache, 0, list("abcde")) == cache
    assert cached_slice(cache, 2, ["c", "d"]) == [cache[1]]
    assert cached_slice(cache, 2, ["c", "d", "e"]) == cache[1:]
    assert cached_slice(cache, 1, ["b", "c"]) is None
    assert cached_slice(cache, 0, ["a", "b", "c"]) is None


def test_options_are_checked_when_built():
    for kw, message in ((dict(max_drop=float("nan")), "finite"), (dict(max_drop=1, fallback="int4"), "fallback"),
                        (dict(max_drop=1, rank="random"), "ranking"), (dict(max_drop=1, rank_images=0), "rank_images"),
                        (dict(max_drop=1, confidence=0.3), "confidence"),
                        (dict(max_drop=1, max_evaluations=0), "max_evaluations")):
        with pytest.raises(FcnquantError, match=message):
            TuneOptions(**kw)


def test_tune_refuses_image_choices_in_the_data_and_recovery_it_cannot_run(voc, tmp_path):
    model = _conv_model(tmp_path / "m.onnx")
    for data in (DataConfig(voc, ids=("2007_000001",)), DataConfig(voc, num_images=3)):
        with pytest.raises(FcnquantError, match="TuneOptions.images"):
            tune(model, tmp_path / "out.onnx", TuneOptions(1.0), data, QUIET)
    for plan in (RecoveryPlan(equalize=True), RecoveryPlan(adaround=True), RecoveryPlan(scale_search=True)):
        with pytest.raises(FcnquantError, match="tune cannot run"):
            check_plan(plan)
    with pytest.raises(FcnquantError, match="not 'auto'"):
        check_plan(RecoveryPlan(bias_correction=True, bias_correction_error="auto"))
    check_plan(RecoveryPlan(bias_correction=True, pow2_rounding="error"))


def test_agreement_counts_the_pixels_whose_class_changed(voc, tmp_path):
    """Per-image changed-pixel counts against the float model's class maps, for any shards, equal numpy's count
    over the two models' predictions (each image run alone through evaluate's scoring)."""
    from fcnquant.data import iter_batches
    from fcnquant.evaluate import output_to_classes
    from fcnquant.runtime import run_logits

    ref = _conv_model(tmp_path / "ref.onnx")
    other = tmp_path / "other.onnx"
    m = onnx.load(str(ref))
    w = numpy_helper.to_array(m.graph.initializer[0]) + np.random.default_rng(9).normal(0, 0.3, (21, 3, 1, 1))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w"))
    onnx.save(m, str(other))
    ts = _tuning_set(voc, ref, RunConfig(LocalExecutor(shards=3, progress=False)))
    ts.set_float(ref, agreement=True)
    score = ts.score(other)
    want, pixels = [], []
    for path in (ref, other):
        sess = make_session(str(path))
        preds = [output_to_classes(np.asarray(run_logits(sess, b.images)[0]), b.masks.shape[1:], 21)[0]
                 for b in iter_batches(ts.dataset, ts.preset, ts.ids, 1)]
        want.append(preds)
    changed = np.array([(a != b).sum() for a, b in zip(*want)])
    pixels = np.array([a.size for a in want[0]])
    np.testing.assert_array_equal(score.changed, changed)
    np.testing.assert_array_equal(score.pixels, pixels)
    assert changed.sum() > 0 and score.disagreement == pytest.approx(100 * changed.sum() / pixels.sum())
    assert ts.score(ref).disagreement == 0.0


def _boot_se(values_fn, n: int, draws: int = 1000, seed: int = 4) -> float:
    """Returns the standard deviation of ``values_fn(weights)`` over bootstrap draws of n images (numpy)."""
    rng = np.random.default_rng(seed)
    return float(np.std([values_fn(rng.multinomial(n, np.full(n, 1.0 / n))) for _ in range(draws)]))


def _miou(cm: np.ndarray) -> float:
    """mIoU x100 over classes with a non-empty union, written out from the definition."""
    ious = []
    for c in range(cm.shape[0]):
        tp, union = cm[c, c], cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
        if union > 0:
            ious.append(tp / union)
    return 100.0 * float(np.mean(ious))


def test_the_agreement_objective_has_a_smaller_standard_error_than_the_labelled_drop(tune_voc, tmp_path):
    """The demo fcn8s and its all-int8 npu-pow2 model (per-tensor weights) on the tuner's 32-image synthetic set:
    the bootstrap standard error of the changed-pixel percentage is smaller than that of the labelled mIoU drop,
    both from the same per-image values and the same draws, computed here with numpy."""
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.demo_models import demo_model_path
    from fcnquant.quantize import QuantConfig, quantize_model

    model = demo_model_path("fcn8s")
    ds = open_dataset(tune_voc, "train")
    stats = collect_stats(model, DataConfig(tune_voc, split="train", ids=ds.ids[:8]), QUIET)
    quantize_model(model, build_table(stats, "kl", "npu-pow2"), tmp_path / "q.onnx",
                   QuantConfig(target="npu-pow2", per_channel=False))
    ids = ds.ids[8:]
    ts = TuningSet(ds, ids, DataConfig(tune_voc).preset_for(make_session(model)), QUIET)
    f = ts.set_float(model, agreement=True)
    q = ts.score(tmp_path / "q.onnx")
    n = len(ids)
    fc, qc = f.confusions.astype(np.float64), q.confusions.astype(np.float64)
    se_drop = _boot_se(lambda w: _miou(np.tensordot(w, fc, 1)) - _miou(np.tensordot(w, qc, 1)), n)
    se_agree = _boot_se(lambda w: 100.0 * (w @ q.changed) / (w @ q.pixels), n)
    assert q.changed.sum() > 0 and se_drop > 0
    assert se_agree < se_drop, (se_agree, se_drop)
