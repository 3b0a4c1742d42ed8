"""compare in two passes: final metrics from plain sessions over every image, drift on a spread subsample."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fcnquant.cli import main
from fcnquant.compare import (CompareOptions, CompareReport, DriftSpec, compare_models, drift_ids, final_metrics,
                              layer_drift)
from fcnquant.data import get_preset, iter_batches, open_dataset
from fcnquant.errors import DataError
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig
from fcnquant.runtime import make_session
from tests.compare.helpers import HW, planted_params

N_VAL = 5
QUIET = RunConfig(progress=False)


@pytest.fixture(scope="module")
def voc(synthetic_voc):
    return synthetic_voc(train=0, val=N_VAL, size=40, seed=4)


def _images(voc, ids):
    ds = open_dataset(voc, "val")
    pre = get_preset("awesome", model_hw=(HW, HW))
    return np.concatenate([b.images for b in iter_batches(ds, pre, ids, batch_size=1)])


def _planted_snr(images: np.ndarray) -> float:
    w1, b1, _, _, noise = planted_params()
    a = np.einsum("oc,nchw->nohw", w1.astype(np.float64), images.astype(np.float64)) + b1[None, :, None, None]
    return 10 * math.log10(np.sum(a**2) / (images.shape[0] * np.sum(noise.astype(np.float64) ** 2)))


def test_drift_ids_spread_evenly_and_deterministic():
    ids = [f"i{k:03d}" for k in range(100)]
    got = drift_ids(ids, 16)
    # the middle of each of 16 equal strata: floor((2j + 1) * 100 / 32)
    assert got == [ids[(2 * j + 1) * 100 // 32] for j in range(16)]
    assert got[0] == "i003" and got[-1] == "i096" and len(set(got)) == 16
    assert drift_ids(ids, 16) == got
    assert drift_ids(ids, 1) == ["i050"]
    assert drift_ids(ids, "all") == ids and drift_ids(ids, None) == ids and drift_ids(ids, 100) == ids
    assert drift_ids(ids[:3], 16) == ids[:3]
    for bad in (0, -2, "x", 2.5):
        with pytest.raises(DataError):
            drift_ids(ids, bad)


def test_drift_on_the_subsample_and_final_metrics_on_every_image(voc, models):
    report = compare_models(models[0], models[1], voc, QUIET, CompareOptions(drift_images=2))
    ds = open_dataset(voc, "val")
    chosen = drift_ids(list(ds.ids), 2)
    assert len(chosen) == 2 and report.drift_ids == tuple(chosen) and report.drift_images == 2
    assert report.images == N_VAL
    a = report.layers[0]
    assert a.float_name == "a"
    sub = _images(voc, chosen)
    assert a.accumulated.count == sub.shape[0] * 8 * HW * HW
    assert a.accumulated.snr_db == pytest.approx(_planted_snr(sub), abs=1e-3)
    assert a.isolated.snr_db == pytest.approx(_planted_snr(sub), abs=1e-3)
    # the final metrics are those of fcnquant eval of each model over all N_VAL images
    ev_f, ev_q = evaluate(models[0], voc, QUIET), evaluate(models[1], voc, QUIET)
    assert report.final.miou_float == ev_f.miou and report.final.miou_quant == ev_q.miou
    assert report.final.pixels == N_VAL * HW * HW
    # the subsample size is in the text, JSON and HTML report
    assert "per-layer drift on 2 of them" in report.format_table()
    d = report.to_dict()
    assert d["images"] == N_VAL and d["drift_images"] == 2 and d["drift_ids"] == chosen
    assert CompareReport.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_all_drift_images_equal_the_whole_split(voc, models, tmp_path):
    report = compare_models(models[0], models[1], voc, QUIET, CompareOptions(drift_images="all"))
    assert report.drift_images == N_VAL
    assert report.layers[0].accumulated.snr_db == pytest.approx(_planted_snr(_images(voc, None)), abs=1e-3)
    path = tmp_path / "r.html"
    report.to_html(path)
    assert f"per-layer drift on {N_VAL} of them" in path.read_text(encoding="utf-8")


def test_old_report_without_drift_fields_reads_as_drift_on_all_images(voc, models):
    d = compare_models(models[0], models[1], voc, QUIET, CompareOptions(drift_images=1)).to_dict()
    del d["drift_images"], d["drift_ids"]
    back = CompareReport.from_dict(d)
    assert back.drift_count == back.images == N_VAL


def test_layer_drift_isolated_only_and_final_metrics_hook(voc, models):
    ds = open_dataset(voc, "val")
    pre = get_preset("awesome", model_hw=(HW, HW))
    ids = list(ds.ids)[:3]
    r = layer_drift(models[0], models[1], ds, pre, ids, DriftSpec(accumulated=False), progress=False)
    assert r.accumulated is None and set(r.isolated) == {"a", "output"}
    assert r.isolated["a"].snr_db == pytest.approx(_planted_snr(_images(voc, ids)), abs=1e-3)
    assert r.isolated["output"].snr_db == math.inf  # its inputs are the float model's: no own error
    seen = []
    fm = final_metrics(make_session(models[0]), make_session(models[1]), ds, pre, list(ds.ids),
                       on_batch=lambda batch, pf, pq: seen.append((list(batch.ids), pf.shape, pq.shape)),
                       progress=False)
    assert [i for ids_, _, _ in seen for i in ids_] == list(ds.ids)
    assert all(pf == pq == (1, HW, HW) for _, pf, pq in seen)
    assert fm.miou_float == evaluate(models[0], voc, QUIET).miou


def test_cli_drift_images(voc, models, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["compare", str(models[0]), str(models[1]), "--data", str(voc), "--drift-images", "3",
                 "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["drift_images"] == 3
    assert "per-layer drift on 3 of them" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(models[0]), str(models[1]), "--data", str(voc), "--drift-images", "0"])
    assert exc.value.code == 2
