"""Power-of-two scales by output error (fcnquant.recover.scale_search): the search's errors against an independent
onnxruntime run of the emitted models, and the table it returns against the re-emitted model."""
from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fcnquant.calibrate import build_table, collect_stats
from fcnquant.data import DataConfig, get_preset, iter_batches, open_dataset
from fcnquant.execute import LocalExecutor, RunConfig
from fcnquant.quantize import QuantConfig, quantize_model
from fcnquant.recover.scale_search import (ScaleSearchOptions, kl_divergence, output_error, scale_groups,
                                           search_activation_scales)
from fcnquant.runtime import make_session
from tests.recover.helpers import branching_model

QUIET = RunConfig(progress=False)


def calib(ds, ids) -> DataConfig:
    return DataConfig(root=ds, ids=tuple(ids), preset="awesome", size=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    tmp = tmp_path_factory.mktemp("ss")
    ds = open_dataset(synthetic_voc(train=6, val=1, size=32, seed=5), "train")
    fpath = tmp / "float.onnx"
    onnx.save(branching_model(3), str(fpath))
    ids = list(ds.ids)
    stats = collect_stats(fpath, calib(ds, ids), QUIET)
    table = build_table(stats, "kl", "npu-pow2", pow2_rounding="error")
    qpath = tmp / "q.onnx"
    quantize_model(fpath, table, qpath, QuantConfig(target="npu-pow2", per_channel=False, pow2_rounding="error"))
    return tmp, ds, ids, fpath, qpath, table


def images(ds, ids):
    return [b.images for b in iter_batches(ds, get_preset("awesome", size=32), ids, 1, with_masks=False)]


def output_mse(qmodel, fpath, xs, scales=None) -> float:
    """Independent: the QDQ model with its scale initializers set to ``scales``, run by onnxruntime without graph
    optimisations, against the float model; mean over images of the mean squared output difference."""
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    for t in m.graph.initializer:
        if scales and t.name in scales:
            t.CopyFrom(numpy_helper.from_array(np.asarray(scales[t.name], np.float32), t.name))
    q = make_session(m.SerializeToString(), optimization="none")
    f = make_session(str(fpath), optimization="none")
    errs = [np.mean((q.run(None, {"input": x})[0].astype(np.float64) - f.run(None, {"input": x})[0]) ** 2)
            for x in xs]
    return float(np.mean(errs))


def test_groups_have_the_two_neighbouring_powers_of_two(setup):
    _, _, _, fpath, qpath, table = setup
    q = onnx.load(str(qpath))
    groups = scale_groups(q, table)
    inits = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in q.graph.initializer}
    acts = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert sorted(g.init for g in groups) == sorted({n.input[1] for n in acts})
    for g in groups:
        e = table.tensors[g.entries[0]]
        up = 2.0 ** math.ceil(math.log2(max(abs(e.lo), abs(e.hi)) / 127))
        assert g.candidates == (up, up / 2)
        assert g.candidates[g.initial] == inits[g.init] == e.scale
    wide = scale_groups(q, table, extra=1)
    assert [g.candidates for g in wide] == [(2 * g.candidates[0],) + g.candidates + (g.candidates[1] / 2,)
                                            for g in groups]


def test_search_errors_match_onnxruntime_and_the_brute_force_neighbourhood(setup):
    _, ds, ids, fpath, qpath, table = setup
    q = onnx.load(str(qpath))
    res = search_activation_scales(qpath, fpath, table, calib(ds, ids), QUIET,
                                   ScaleSearchOptions(images=None, sweeps=5, tol=0.0))
    xs = images(ds, ids)
    assert res.error_before == pytest.approx(output_mse(q, fpath, xs), rel=1e-3)
    groups = scale_groups(q, table)
    chosen = {g.init: res.table.tensors[g.entries[0]].scale for g in groups}
    assert res.error_after == pytest.approx(output_mse(q, fpath, xs, chosen), rel=1e-3)
    assert res.error_after <= res.error_before
    # every choice of the tiny model by brute force: no single-group move beats the search's choice
    errs = {}
    for combo in itertools.product(*[range(len(g.candidates)) for g in groups]):
        errs[combo] = output_mse(q, fpath, xs, {g.init: g.candidates[c] for g, c in zip(groups, combo)})
    picked = tuple(g.candidates.index(chosen[g.init]) for g in groups)
    for k in range(len(groups)):
        moved = list(picked)
        moved[k] = 1 - moved[k]
        assert errs[tuple(moved)] >= errs[picked] * (1 - 1e-3)
    assert {c.init for c in res.changes} == {g.init for g, i in zip(groups, picked) if i != g.initial}


def test_reemitted_model_carries_the_chosen_scales(setup, tmp_path):
    _, ds, ids, fpath, qpath, table = setup
    res = search_activation_scales(qpath, fpath, table, calib(ds, ids), QUIET,
                                   ScaleSearchOptions(images=3, metric="kl"))
    out = tmp_path / "q2.onnx"
    quantize_model(fpath, res.table, out, QuantConfig(target="npu-pow2", per_channel=False, pow2_rounding="error"))
    q2 = onnx.load(str(out))
    inits = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in q2.graph.initializer
             if t.name.endswith("_scale")}
    for g in scale_groups(onnx.load(str(qpath)), table):
        assert inits[g.init] == res.table.tensors[g.entries[0]].scale
    assert res.images == 3 and res.to_dict()["groups"] == len(scale_groups(q2, res.table))


def test_kl_divergence_by_hand():
    p = np.log(np.array([[0.5, 0.5]]).reshape(1, 2, 1, 1))
    q = np.log(np.array([[0.25, 0.75]]).reshape(1, 2, 1, 1))
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(p, q) == pytest.approx(want, rel=1e-12)
    assert kl_divergence(p, p) == 0.0


def test_non_pow2_tables_are_refused(setup, tmp_path):
    tmp, ds, ids, fpath, qpath, _ = setup
    stats = collect_stats(fpath, calib(ds, ids), QUIET)
    trt = build_table(stats, "kl", "tensorrt")
    from fcnquant.errors import FcnquantError

    with pytest.raises(FcnquantError):
        search_activation_scales(qpath, fpath, trt, calib(ds, ids), QUIET)
    with pytest.raises(FcnquantError, match="metric"):
        ScaleSearchOptions(metric="l1")


@pytest.mark.parametrize("metric", ["mse", "kl"])
def test_three_shards_give_the_search_of_one_pass(setup, metric):
    """Each evaluation runs as shards (LocalExecutor(shards=3)): the per-image errors are added in image order, so
    the errors, the evaluations and the chosen scales equal those of one pass."""
    _, ds, ids, fpath, qpath, table = setup
    opts = ScaleSearchOptions(images=None, sweeps=2, tol=0.0, metric=metric)
    one = search_activation_scales(qpath, fpath, table, calib(ds, ids), QUIET, opts)
    three = search_activation_scales(qpath, fpath, table, calib(ds, ids), LocalExecutor(shards=3, progress=False),
                                     opts)
    assert (three.error_before, three.error_after, three.signal, three.evaluations) == \
        (one.error_before, one.error_after, one.signal, one.evaluations)
    assert three.changes == one.changes and three.table.tensors == one.table.tensors


def test_output_error_matches_onnxruntime_on_any_number_of_shards(setup):
    _, ds, ids, fpath, qpath, _ = setup
    want = output_mse(onnx.load(str(qpath)), fpath, images(ds, ids))
    one = output_error([qpath], fpath, calib(ds, ids), QUIET, images=None)
    three = output_error([qpath], fpath, calib(ds, ids), LocalExecutor(shards=3, progress=False), images=None)
    assert one == three
    assert one[0] == pytest.approx(want, rel=1e-3)
