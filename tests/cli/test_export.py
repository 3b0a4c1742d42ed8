"""`fcnquant export`: the written model, errors exit 2, the zoo's names, and the message without torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from fcnquant.cli import main  # noqa: E402
from fcnquant.cli.export import MODEL_CHOICES  # noqa: E402
from fcnquant.models import MODEL_NAMES  # noqa: E402
from tests.helpers import dims  # noqa: E402


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main(["export", "fcn8s", "--out", str(out), "--size", "32", "48", "--width", "0.0625", "--num-classes", "5",
               "--dynamic-batch", "--seed", "3"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert dims(proto.graph.input[0]) == ["N", 3, 32, 48] and dims(proto.graph.output[0]) == ["N", 5, 32, 48]
    ckpt = tmp_path / "bad.pth"
    torch.save({"state_dict": {"pretrained.0.weight": torch.zeros(1)}}, ckpt)
    rc = main(["export", "fcn8s", "--out", str(tmp_path / "x.onnx"), "--checkpoint", str(ckpt), "--width", "0.0625"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fcnquant export: error: ") and "'pretrained.0.weight'" in err


def test_cli_model_choices_match_the_zoo():
    assert tuple(MODEL_CHOICES) == tuple(MODEL_NAMES)


def test_cli_export_without_torch_says_how_to_install(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class _NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name=name)
        sys.meta_path.insert(0, _NoTorch())
        from fcnquant.cli import main
        sys.exit(main(["export", "fcn8s", "--out", {str(tmp_path / 'm.onnx')!r}]))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "pip install 'fcnquant[torch]'" in res.stderr and "torch==2.13.0" in res.stderr
