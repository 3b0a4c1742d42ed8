"""Default data: $FCNQUANT_DATA, ./data/VOCdevkit, ./VOCdevkit, else the built-in synthetic VOC with a warning."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fcnquant.data
from fcnquant.data import resolve_data
from fcnquant.demo_models import demo_model_info, demo_model_path, is_demo_model
from fcnquant.errors import DataError


def _model(path, metadata=None):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((21, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 21, 32, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_voc(synthetic_voc):
    return synthetic_voc(train=3, val=2, size=40, seed=1)


@pytest.fixture
def clean(tmp_path, monkeypatch, tiny_voc):
    """An empty current folder, no $FCNQUANT_DATA, and a stub built-in dataset (the tiny one, no generation)."""
    monkeypatch.delenv("FCNQUANT_DATA", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    builtin = tmp_path / "builtin"
    monkeypatch.setattr(fcnquant.data, "builtin_dataset", lambda **kw: builtin)
    return work, builtin, _model(tmp_path / "mine.onnx")


def _voc_at(folder):
    (folder / "VOC2012" / "JPEGImages").mkdir(parents=True)
    return folder


def test_no_data_anywhere_falls_back_to_builtin_with_one_warning_line(clean, caplog):
    work, builtin, model = clean
    with caplog.at_level(logging.INFO, logger="fcnquant"):
        choice = resolve_data(None, model)
    assert choice.root == builtin and choice.origin == "builtin" and choice.synthetic
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "\n" not in msg and "SYNTHETIC" in msg and str(builtin) in msg
    assert "--data DIR" in msg and "FCNQUANT_DATA" in msg and "./data/VOCdevkit" in msg


def test_given_data_is_used_as_is(clean, caplog):
    work, builtin, model = clean
    with caplog.at_level(logging.INFO, logger="fcnquant"):
        assert resolve_data("somewhere", model).origin == "given"
    assert not caplog.records


def test_local_folders_in_order(clean):
    work, builtin, model = clean
    _voc_at(work / "VOCdevkit")
    assert resolve_data(None, model).root == work / "VOCdevkit"
    _voc_at(work / "data" / "VOCdevkit")  # mmsegmentation's layout comes first
    choice = resolve_data(None, model)
    assert choice.root == work / "data" / "VOCdevkit" and choice.origin == "local"


def test_env_var_comes_first_and_must_be_a_voc(clean, tmp_path, monkeypatch):
    work, builtin, model = clean
    _voc_at(work / "VOCdevkit")
    env = _voc_at(tmp_path / "elsewhere")
    monkeypatch.setenv("FCNQUANT_DATA", str(env))
    assert resolve_data(None, model).root == env and resolve_data(None, model).origin == "env"
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("FCNQUANT_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\$FCNQUANT_DATA=.*empty is not a VOC dataset folder"):
        resolve_data(None, model)


def test_demo_models_and_their_int8_fp16_use_the_builtin_set_silently(clean, tmp_path, monkeypatch, caplog):
    work, builtin, model = clean
    _voc_at(work / "VOCdevkit")
    monkeypatch.setenv("FCNQUANT_DATA", str(work / "VOCdevkit"))  # a real VOC is no use for a synthetic-trained demo
    demo = demo_model_path("fcn8s")
    with caplog.at_level(logging.INFO, logger="fcnquant"):
        choice = resolve_data(None, demo)
    assert choice.root == builtin and choice.origin == "demo" and not caplog.records
    info = demo_model_info("fcn16s")
    int8 = _model(tmp_path / "q.onnx", {"fcnquant.model_sha256": info.sha256})  # as fcnquant quantize writes it
    weights = {p.key: p.value for p in onnx.load(str(info.path)).metadata_props}["fcnquant.weights"]
    fp16 = _model(tmp_path / "h.onnx", {"fcnquant.weights": weights})  # as fcnquant fp16 keeps it
    other = _model(tmp_path / "o.onnx", {"fcnquant.weights": "random seed=0", "fcnquant.model_sha256": "0" * 64})
    assert is_demo_model(demo) and is_demo_model(int8) and is_demo_model(fp16) and is_demo_model(demo.read_bytes())
    assert not is_demo_model(other) and not is_demo_model(model) and not is_demo_model(tmp_path / "missing.onnx")
    assert resolve_data(None, other).origin == "env"


def test_calibrate_without_data_prints_the_warning(tmp_path, tiny_voc):
    """The CLI as a user runs it (the built-in set stubbed by the tiny one, so nothing is generated)."""
    model = _model(tmp_path / "some_model.onnx")
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import fcnquant.data
        fcnquant.data.builtin_dataset = lambda **kw: Path({str(tiny_voc)!r})
        from fcnquant.cli import main
        sys.exit(main(["calibrate", {str(model)!r}, "--method", "kl", "--num-images", "2", "--no-progress"]))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "FCNQUANT_DATA"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1 and "SYNTHETIC VOC" in lines[0] and str(tiny_voc) in lines[0], res.stderr
    assert "pass --data DIR" in lines[0] and (tmp_path / "some_model.calib.json").is_file()
