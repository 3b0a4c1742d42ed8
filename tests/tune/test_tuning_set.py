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
