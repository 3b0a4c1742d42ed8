"""compare's one pass equals the final and drift passes run separately, bit for bit, with fewer plain runs."""
from __future__ import annotations

import json

import onnx
import pytest

from fcnquant.compare.drift.measure import DriftSpec, drift_ids, drift_shard, merge_drift
from fcnquant.compare.final import FinalScorer, final_shard, merge_final
from fcnquant.compare.histograms import table_histograms
from fcnquant.compare.joint import compare_shard
from fcnquant.compare.tensors.pairing import pair_tensors
from fcnquant.data import DataConfig
from fcnquant.demo_models import demo_model_path
from fcnquant.execute import LocalExecutor

NAMES = ("the float model", "the quantized model")
N_VAL = 6


@pytest.fixture(scope="module")
def setup(synthetic_voc, demo_int8):
    f, q = demo_model_path("fcn8s"), demo_int8.model
    measured = pair_tensors(onnx.load(str(f)), onnx.load(str(q))).measured
    cfg = DataConfig.of(synthetic_voc(train=0, val=N_VAL, size=180, seed=5))
    ds = cfg.open(f, progress=False)
    return f, q, measured, cfg, ds, cfg.take(ds)


def _separate(setup, shards, batch, drift_on, hists):
    f, q, measured, cfg, ds, ids = setup
    ex, models = LocalExecutor(shards=shards, progress=False), {"float": f, "quant": q}
    final = merge_final(ex.map(final_shard, ds, ids, models=models, args=(cfg, batch, 3, 2, NAMES)))
    spec = DriftSpec(pairs=measured, batch_size=batch)
    drift = merge_drift(ex.map(drift_shard, ds, drift_on, args=(final.preset, spec, hists), models=models))
    return final, drift


def _joint(setup, shards, batch, drift_on, hists):
    f, q, measured, cfg, ds, ids = setup
    spec = DriftSpec(pairs=measured, batch_size=batch)
    parts = LocalExecutor(shards=shards, progress=False).map(
        compare_shard, ds, ids, models={"float": f, "quant": q},
        args=(cfg, batch, 3, 2, NAMES, spec, tuple(drift_on), hists))
    return merge_final([p[0] for p in parts]), merge_drift([p[1] for p in parts if p[1] is not None])


def _facts(final, drift):
    """Everything of the two passes the report reads, as plain values (NaN-free JSON)."""
    c = final.counts
    return {
        "cm": [c.cm_float.matrix.tolist(), c.cm_quant.matrix.tolist()],
        "counts": [c.pixels, c.changed, c.boundary_pixels, c.boundary_changed, c.labelled],
        "gallery": [(i, n, pf.tolist(), pq.tolist()) for i, n, pf, pq in final.gallery.best()],
        "preset": final.preset.to_dict(),
        "drift": json.dumps(drift.sums.result().to_dict(), sort_keys=True),
        "hists": {k: (h.counts.tolist() if hasattr(h.counts, "tolist") else list(h.counts))
                  for k, h in drift.histograms.items()},
    }


@pytest.mark.parametrize("shards,batch", [(1, 1), (3, 1), (2, 2)])
def test_one_pass_equals_the_separate_passes(setup, shards, batch):
    from fcnquant.calibrate.table import TensorEntry

    ids, measured = setup[5], setup[2]
    drift_on = drift_ids(ids, 3)  # ids 1, 3, 5: the shards of 3 hold one each, 2 shards hold 1 and 2
    hists = table_histograms({measured[1].float_name: TensorEntry(-1.0, 6.0, 0.0, 5.0, 5.0 / 255, 0)},
                             measured)
    want = _facts(*_separate(setup, shards, batch, drift_on, hists))
    got = _facts(*_joint(setup, shards, batch, drift_on, hists))
    assert got == want
    assert sum(sum(row) for row in want["cm"][0]) > 0 and want["drift"].count('"count"') == 2 * len(measured)
    assert json.loads(want["drift"])["ids"] == list(drift_on) and any(sum(v) for v in want["hists"].values())


def test_drift_images_take_their_logits_from_the_drift_sessions(setup, monkeypatch):
    """6 images, 3 of them drift images: the plain sessions run on the 3 others and on the first drift image
    (the check); where no copy gives the logits, on every image, and the result is the same."""
    ids = setup[5]
    calls: list[str] = []
    plain = FinalScorer.logits

    def counted(self, mb):
        calls.extend(mb.ids)
        return plain(self, mb)

    monkeypatch.setattr(FinalScorer, "logits", counted)
    drift_on = drift_ids(ids, 3)
    fast = _facts(*_joint(setup, 1, 1, drift_on, {}))
    assert calls == [i for i in ids if i not in drift_on[1:]]
    calls.clear()
    monkeypatch.setattr("fcnquant.compare.tensors.plain_logits.plain_logits", lambda model, exposed: None)
    slow = _facts(*_joint(setup, 1, 1, drift_on, {}))
    assert calls == ids and slow == fast
