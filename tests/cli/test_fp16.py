"""``fcnquant fp16`` from the command line."""
from __future__ import annotations

import onnx

from fcnquant.cli import main
from tests.quantize.helpers import save_model, tiny_fcn


def test_fp16_cli(tmp_path, capsys):
    src = save_model(tiny_fcn(), tmp_path / "fcn.onnx")
    out = tmp_path / "fcn.fp16.onnx"
    assert main(["fp16", str(src), "--out", str(out), "--keep-io-fp32", "--block-op", "Resize"]) == 0
    assert "wrote" in capsys.readouterr().out
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
