"""Bad outputs: every writing command refuses, before any work, an output that names an input, another output, a
folder or a missing folder; a full disk is one line; a multi-artifact command writes all of its artifacts or none."""
from __future__ import annotations

import errno
import os

import pytest

from fcnquant._io import all_or_nothing, atomic_write_text, check_outputs
from fcnquant.cli import main
from fcnquant.errors import FcnquantError


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    from tests.test_evaluate import conv_model

    base = tmp_path_factory.mktemp("badout")
    return conv_model(base / "m.onnx"), synthetic_voc(train=2, val=2, size=32, seed=2)


def _bad(argv, capsys, cmd, words, *keep):
    """Runs argv, asserts exit 2 with one stderr line containing ``words``, and ``keep`` files byte-identical."""
    before = {p: p.read_bytes() for p in keep}
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fcnquant {cmd}: error:") and "\n" not in err and words in err, err
    for p, data in before.items():
        assert p.read_bytes() == data


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name not in ("m.onnx", "link.onnx"))


@pytest.mark.parametrize("cmd, argv", [
    ("calibrate", ["calibrate", "{m}", "--out-table", "{m}"]),
    ("calibrate", ["calibrate", "{m}", "--save-stats", "{m}"]),
    ("calibrate", ["calibrate", "{m}", "--out", "q.onnx", "--save-ids", "{m}"]),
    ("compare", ["compare", "{m}", "{m}", "--report", "{m}"]),
    ("eval", ["eval", "{m}", "--json", "{m}"]),
    ("fp16", ["fp16", "{m}", "--out", "{m}"]),
    ("equalize", ["equalize", "{m}", "--out", "{m}"]),
    ("tune", ["tune", "{m}", "--max-drop", "1", "--out", "{m}"]),
])
def test_an_output_naming_the_input_is_refused(setup, tmp_path, capsys, cmd, argv, monkeypatch):
    model, _ = setup
    m = tmp_path / "m.onnx"
    m.write_bytes(model.read_bytes())
    monkeypatch.chdir(tmp_path)
    _bad([a.format(m=m) for a in argv], capsys, cmd, "would overwrite the input", m)
    assert _leftovers(tmp_path) == []


def test_a_symlink_or_relative_path_to_the_input_is_refused(setup, tmp_path, capsys, monkeypatch):
    model, _ = setup
    m = tmp_path / "m.onnx"
    m.write_bytes(model.read_bytes())
    (tmp_path / "link.onnx").symlink_to(m)
    monkeypatch.chdir(tmp_path)
    _bad(["eval", m, "--json", "link.onnx"], capsys, "eval", "would overwrite the input", m)
    (tmp_path / "sub").mkdir()
    _bad(["eval", "m.onnx", "--json", "sub/../m.onnx"], capsys, "eval", "would overwrite the input", m)


def test_two_outputs_naming_one_file_are_refused(setup, tmp_path, capsys):
    model, _ = setup
    x = tmp_path / "x"
    _bad(["calibrate", model, "--out", x, "--out-table", x], capsys, "calibrate", "name the same file")
    _bad(["compare", model, model, "--json", x, "--report", x], capsys, "compare", "name the same file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd, argv", [
    ("quantize", ["quantize", "{m}", "--table", "{m}", "--out", "{o}"]),
    ("fp16", ["fp16", "{m}", "--out", "{o}"]),
    ("eval", ["eval", "{m}", "--json", "{o}"]),
    ("compare", ["compare", "{m}", "{m}", "--json", "{o}"]),
    ("merge-stats", ["merge-stats", "{m}", "--out", "{o}"]),
    ("calibrate", ["calibrate", "{m}", "--out-table", "{o}"]),
])
def test_an_output_that_is_a_folder_is_refused_before_any_work(setup, tmp_path, capsys, cmd, argv):
    model, _ = setup
    _bad([a.format(m=model, o=tmp_path) for a in argv], capsys, cmd, "is a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd, argv", [
    ("fp16", ["fp16", "{m}", "--out", "{o}"]),
    ("eval", ["eval", "{m}", "--json", "{o}"]),
    ("compare", ["compare", "{m}", "{m}", "--report", "{o}"]),
    ("calibrate", ["calibrate", "{m}", "--save-stats", "{o}"]),
])
def test_a_missing_output_folder_is_refused_before_any_work(setup, tmp_path, capsys, cmd, argv):
    model, _ = setup
    _bad([a.format(m=model, o=tmp_path / "nope" / "f") for a in argv], capsys, cmd, "output folder does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(setup, tmp_path, capsys, monkeypatch):
    from fcnquant.calibrate.table import CalibrationTable

    model, data = setup

    def full(self, path):
        with open(path + ".part" if isinstance(path, str) else str(path) + ".part", "wb"):
            pass
        os.remove(str(path) + ".part")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(CalibrationTable, "save", full)
    _bad(["calibrate", model, "--data", data, "--size", "24", "--num-images", "2", "--no-progress",
          "--out", tmp_path / "q.onnx", "--out-table", tmp_path / "t.json", "--save-stats", tmp_path / "s.npz"],
         capsys, "calibrate", "no space left", model)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_turn_enospc_into_one_error(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FcnquantError, match="no space left"):
        atomic_write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_calibrate_keeps_no_model_when_the_table_fails(setup, tmp_path, capsys, monkeypatch):
    from fcnquant.calibrate.table import CalibrationTable

    model, data = setup
    monkeypatch.setattr(CalibrationTable, "save", lambda self, path: (_ for _ in ()).throw(
        FcnquantError("table failed")))
    _bad(["calibrate", model, "--data", data, "--size", "24", "--num-images", "2", "--no-progress",
          "--out", tmp_path / "q.onnx", "--out-table", tmp_path / "t.json"], capsys, "calibrate", "table failed")
    assert list(tmp_path.iterdir()) == []  # no model, no staging folder, no temporaries


def test_compare_keeps_no_json_when_the_report_fails(setup, tmp_path, capsys, monkeypatch):
    from fcnquant.compare.report.compare_report import CompareReport

    model, data = setup
    q = tmp_path / "q" / "q.onnx"
    q.parent.mkdir()
    assert main(["calibrate", str(model), "--data", str(data), "--size", "24", "--num-images", "2", "--no-progress",
                 "--out", str(q), "--out-table", str(q.parent / "t.json")]) == 0
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    monkeypatch.setattr(CompareReport, "to_html", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    _bad(["compare", model, q, "--data", data, "--size", "24", "--no-progress", "--json", out / "r.json",
          "--report", out / "r.html"], capsys, "compare", "no space left", model, q)
    assert list(out.iterdir()) == []


def test_all_or_nothing_renames_all_at_the_end(tmp_path):
    with all_or_nothing():
        atomic_write_text(tmp_path / "a", "1")
        atomic_write_text(tmp_path / "b", "2")
        assert not (tmp_path / "a").exists()
    assert (tmp_path / "a").read_text() == "1" and (tmp_path / "b").read_text() == "2"
    with pytest.raises(RuntimeError), all_or_nothing():
        atomic_write_text(tmp_path / "c", "3")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_check_outputs_accepts_distinct_new_files(tmp_path):
    (tmp_path / "in").write_text("x")
    check_outputs({"--a": tmp_path / "a", "--b": tmp_path / "b", "--c": None}, {"IN": tmp_path / "in", "X": None})


@pytest.mark.parametrize("cmd, argv, words", [
    ("eval", ["eval", "{m}", "--threads", "-1"], "--threads"),
    ("calibrate", ["calibrate", "{m}", "--out", "{o}/q.onnx", "--adaround", "--adaround-iterations", "0"],
     "--adaround-iterations"),
    ("equalize", ["equalize", "{m}", "--out", "{o}/e.onnx", "--tol", "nan"], "--tol"),
    ("calibrate", ["calibrate", "{m}", "--seed", "-1", "--out-table", "{o}/t.json"], "seed"),
    ("synth-voc", ["synth-voc", "{o}/v", "--seed", "-1"], "seed"),
])
def test_nonsense_options_are_one_line_errors(setup, tmp_path, capsys, cmd, argv, words):
    model, _ = setup
    _bad([a.format(m=model, o=tmp_path) for a in argv], capsys, cmd, words, model)
    assert list(tmp_path.iterdir()) == []


def test_tune_keeps_no_model_when_the_json_fails(setup, tmp_path, capsys, monkeypatch):
    from fcnquant.tune.result import TuneResult

    model, data = setup
    monkeypatch.setattr(TuneResult, "to_json", lambda self, path: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    _bad(["tune", model, "--data", data, "--max-drop", "100", "--num-calib", "1", "--num-tune", "1",
          "--no-progress", "--out", tmp_path / "t.onnx", "--json", tmp_path / "t.json",
          "--report", tmp_path / "t.html"], capsys, "tune", "no space left", model)
    assert list(tmp_path.iterdir()) == []


def test_equalize_keeps_no_model_when_the_json_fails(setup, tmp_path, capsys, monkeypatch):
    from fcnquant import _io

    model, _ = setup
    monkeypatch.setattr(_io, "atomic_write_text", lambda path, text: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    _bad(["equalize", model, "--out", tmp_path / "e.onnx", "--json", tmp_path / "e.json"], capsys, "equalize",
         "no space left", model)
    assert list(tmp_path.iterdir()) == []


def test_an_image_above_the_pixel_limit_is_one_line(setup, tmp_path, capsys, monkeypatch):
    import shutil

    from PIL import Image

    model, data = setup
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the variable sets it: restored after
    voc = shutil.copytree(data, tmp_path / "voc")
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "1000")  # the set's 32x32 images have 1024 pixels
    _bad(["eval", model, "--data", voc, "--no-progress"], capsys, "eval", "FCNQUANT_MAX_IMAGE_PIXELS")
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "1024")
    assert main(["eval", str(model), "--data", str(voc), "--no-progress"]) == 0


def test_model_digests_from_a_parsed_model_equal_those_from_the_file(tmp_path):
    """Given the caller's parsed model, the digests are the file's (inline) or the inline serialization's (tensors
    marked ``data_location: DEFAULT``), as computed from the file alone, and the caller's model is not changed."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from fcnquant._io import model_digests

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], [w])
    inline = helper.make_model(graph)
    marked = onnx.ModelProto()
    marked.CopyFrom(inline)
    marked.graph.initializer[0].data_location = onnx.TensorProto.DEFAULT  # serialized, unlike the default value
    for name, model in (("inline", inline), ("marked", marked)):
        path = tmp_path / f"{name}.onnx"
        raw = model.SerializeToString()
        path.write_bytes(raw)
        proto = onnx.load_from_string(raw)
        got = model_digests(path, raw, proto)
        assert got == model_digests(path)
        assert proto.SerializeToString() == raw  # untouched
        want_first = hashlib.sha256(inline.SerializeToString()).hexdigest()  # the inline serialization's
        assert got == ((want_first,) if name == "inline" else (want_first, hashlib.sha256(raw).hexdigest()))
