"""``fcnquant quantize`` from the command line."""
from __future__ import annotations

import onnx

from fcnquant.cli import main
from tests.quantize.helpers import images, make_table, save_model, tiny_fcn

X_SHAPE = (1, 3, 16, 16)


def test_quantize_cli(tmp_path, capsys):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    table_path = tmp_path / "calib.json"
    make_table(src, images(X_SHAPE), "ort-cpu").save(table_path)
    out = tmp_path / "fcn.int8.onnx"
    rc = main(["quantize", str(src), "--table", str(table_path), "--out", str(out), "--per-tensor",
               "--exclude", "conv2", "score_.*", "--exclude-op", "Add"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "per-tensor" in printed and "conv2" in printed
    q = onnx.load(str(out))
    names = {n.name: n for n in q.graph.node}
    assert names["conv2"].input[1] == "w2" and names["score_fr"].input[1] == "w_score"


def test_quantize_cli_bad_table(tmp_path, capsys):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    table = make_table(src, images(X_SHAPE), "ort-cpu")
    table.model_sha256 = "f" * 64
    table.save(tmp_path / "calib.json")
    out = tmp_path / "fcn.int8.onnx"
    rc = main(["quantize", str(src), "--table", str(tmp_path / "calib.json"), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fcnquant quantize: error:" in err and "another model" in err
    assert not out.exists()
