"""The model-card table: rows from compare reports and demo summaries, FLOPs/params/shape from the model files."""
from __future__ import annotations

import json

import pytest

from fcnquant.cli import main
from fcnquant.compare import card_rows, card_table
from fcnquant.demo_models import demo_model_path
from fcnquant.errors import FcnquantError
from fcnquant.info import model_info


def _compare_json(path, float_model, quant_model, miou_float, miou_quant):
    path.write_text(json.dumps({"format_version": 1, "float_model": str(float_model), "quant_model": str(quant_model),
                                "final": {"miou_float": miou_float, "miou_quant": miou_quant}}))
    return path


def test_rows_from_a_compare_report_and_a_demo_summary(demo_int8, tmp_path):
    fp32 = demo_model_path("fcn8s")
    info = model_info(fp32)
    report = _compare_json(tmp_path / "int8.json", fp32, demo_int8.model, 66.5, 66.1)
    summary = tmp_path / "fcn8s.summary.json"
    summary.write_text(json.dumps({"summary": [{"model": "fp32", "file": str(fp32), "miou": 66.5},
                                               {"model": "fp16", "file": str(tmp_path / "gone.onnx"), "miou": 66.4}]}))
    rows = card_rows([report, summary])
    assert [r.method for r in rows] == ["fcn8s", "fcn8s int8 (ort-cpu)", "fcn8s fp16"]  # fp32 listed once
    f, q, h = rows
    assert f.backbone == "vgg16" and "awesome" in f.source and f.miou == 66.5 and q.miou == 66.1
    assert f.flops_g == pytest.approx(2 * info.macs / 1e9) and f.params_m == pytest.approx(info.params / 1e6)
    assert q.params_m == f.params_m and f.shape == q.shape == "1x3x160x160"
    assert h.flops_g is None and h.shape == "-" and h.miou == 66.4  # its model file is gone
    text = card_table([report], backbone="VGG-16", source="mine")
    lines = text.splitlines()
    assert lines[0] == "| Methods | Code Source | Backbone | FLOPs(G) | Params(M) | MIoU | Shapes |"
    assert lines[2].startswith(f"| fcn8s | mine | VGG-16 | {2 * info.macs / 1e9:.3f} | {info.params / 1e6:.3f} | "
                               "66.500 | 1x3x160x160 |")
    assert "FLOPs(G) = 2 x multiply-accumulates" in text


def test_cli_table_and_unknown_json(demo_int8, tmp_path, capsys):
    report = _compare_json(tmp_path / "r.json", demo_model_path("fcn8s"), demo_int8.model, 50.0, None)
    assert main(["table", str(report), "--backbone", "vgg"]) == 0
    out = capsys.readouterr().out
    assert "| fcn8s int8 (ort-cpu) | " in out and "| - | 1x3x160x160 |" in out  # no quantized mIoU
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(FcnquantError):
        card_rows([tmp_path / "x.json"])
    assert main(["table", str(tmp_path / "x.json")]) == 2
