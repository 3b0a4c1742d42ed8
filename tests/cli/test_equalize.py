"""``fcnquant equalize`` from the command line."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fcnquant import demo_models
from fcnquant.cli import main
from fcnquant.runtime import make_session

FCN8S = demo_models.DEMO_DIR / "fcn8s.onnx"


def test_equalize_cli_writes_the_model_and_names_what_it_skipped(tmp_path, capsys):
    out = tmp_path / "eq.onnx"
    rc = main(["equalize", str(FCN8S), "--out", str(out), "--json", str(tmp_path / "eq.json"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "equalized 14 pair(s) in 1 chain(s)" in printed
    assert "not equalized: /score_pool4/Conv: 'output' (from /score_pool4/Conv through Add /Add, /Add_1) is a graph " \
           "output" in printed
    assert "max |output diff| / max |output| vs the original" in printed
    eq = onnx.load(str(out))
    meta = {p.key: p.value for p in eq.metadata_props}
    assert meta["fcnquant.preset"] == "awesome" and json.loads(meta["fcnquant.equalized"])["format_version"] == 1
    full = json.loads((tmp_path / "eq.json").read_text())
    assert len(full["pairs"]) == 14 and full["skipped"][0]["node"] == "/score_pool4/Conv"
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    a = make_session(str(FCN8S)).run(None, {"input": x})[0]
    b = make_session(str(out)).run(None, {"input": x})[0]
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eq.json", "eq.onnx"]  # no temporary files left


@pytest.mark.parametrize("argv, message", [
    (["missing.onnx"], "model file not found"),
    ([str(FCN8S), "--absorb-padded"], "only apply with --absorb"),
    ([str(FCN8S), "--tol", "0"], "tol must be positive"),
])
def test_equalize_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    out = tmp_path / "eq.onnx"
    rc = main(["equalize", *argv, "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnquant equalize: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_equalize_cli_unwritable_output(tmp_path, capsys):
    rc = main(["equalize", str(FCN8S), "--out", str(tmp_path / "no" / "eq.onnx"), "--no-progress"])
    assert rc == 2 and "output folder does not exist" in capsys.readouterr().err


def test_equalize_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["equalize", "--help"])
    assert exc.value.code == 0
    assert "--absorb" in capsys.readouterr().out
