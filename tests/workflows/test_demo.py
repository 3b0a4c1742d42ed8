"""The end-to-end pipeline (what `fcnquant demo` runs) on a tiny exported FCN and tiny synthetic VOC."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fcnquant.cli import main
from fcnquant.data import DataConfig
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_voc):
    pytest.importorskip("torch")
    from fcnquant.models.export import export_onnx

    d = tmp_path_factory.mktemp("pipe")
    root = synthetic_voc(train=6, val=4, size=64, seed=3)
    model = export_onnx("fcn16s", d / "tiny16.onnx", size=64, width=1 / 16, seed=1)
    return root, model, d


def test_pipeline_writes_every_artifact_and_scores_match_eval(tiny):
    from fcnquant.workflows import run_pipeline

    root, model, d = tiny
    res = run_pipeline(model, d / "out", DataConfig(root, "train", num_images=4), run=RunConfig(progress=False))
    for p in (res.table, res.stats, res.int8_model, res.fp16_model, res.int8_html, res.fp16_html, res.json):
        assert p.is_file(), p
    q = onnx.load(str(res.int8_model))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert {p.key for p in q.metadata_props} >= {"fcnquant.tensor_map"}
    f16 = onnx.load(str(res.fp16_model))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in f16.graph.initializer)
    # the mIoU the summary reports for each model equals an independent evaluation of that model file
    rows = {r["model"]: r for r in res.rows()}
    for name, path in (("fp32", model), ("fp16", res.fp16_model), ("int8 kl", res.int8_model)):
        ev = evaluate(path, root, RunConfig(progress=False))
        assert rows[name]["miou"] == pytest.approx(ev.miou, abs=1e-9, nan_ok=True)
    # the summary's sign: mIoU change = quantized - float (negative = worse), as compare prints it
    assert "mIoU change" in res.format_summary() and "delta" not in res.format_summary()
    for name in ("fp16", "int8 kl"):
        assert rows[name]["miou_change"] == pytest.approx(rows[name]["miou"] - rows["fp32"]["miou"], nan_ok=True)
    summary = json.loads(res.json.read_text())
    assert summary["calibration_images"] == 4 and len(summary["summary"]) == 3
    assert np.isfinite(summary["summary"][2]["worst_snr"])
    # both reports show the gallery of the most changed images (at most the default 6), inline in the HTML file
    rep = res.int8_report
    assert rep.final.changed > 0 and 0 < len(rep.gallery) <= 6
    assert [g["image_id"] for g in summary["int8"]["gallery"]] == [g.image_id for g in rep.gallery]
    assert res.int8_html.read_text().count("data:image/png;base64,") == 5 * len(rep.gallery)


def test_demo_cli_on_a_given_model(tiny, capsys):
    root, model, d = tiny
    rc = main(["demo", str(model), "--data", str(root), "--num-images", "3", "--method", "minmax",
               "--out", str(d / "cli"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Outputs are in" in out and "int8 minmax" in out
    outputs = next(line for line in out.splitlines() if line.startswith("Outputs are in"))
    assert all(f" {p.name}" in outputs for p in (d / "cli").iterdir())  # every file written is named
    # the model-card table: one row per precision, FLOPs/params counted from each model file
    card = [line for line in out.splitlines() if line.startswith("| fcn16s")]
    assert [line.split(" | ")[0] for line in card] == ["| fcn16s", "| fcn16s fp16", "| fcn16s int8 minmax"]
    assert all("| 1x3x64x64 |" in line and " - |" not in line for line in card)
    assert (d / "cli" / "tiny16.int8.onnx").is_file()


def test_demo_of_a_missing_model_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import fcnquant.data as data

    def no_data(*a, **k):
        raise AssertionError("the dataset was looked for")

    monkeypatch.setattr(data, "resolve_data", no_data)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "nosuchmodel", "--out", str(tmp_path / "a" / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnquant demo: error: model file not found: nosuchmodel") and "fcn8s" in err, err
    assert "\n" not in err and list(tmp_path.iterdir()) == []
