"""Bad models: every model a command writes loads and runs in onnxruntime before the command reports success (or
exit 2, one line, nothing written); an already quantized or float16 model is refused up front where a float32 one
is needed; an opset below 13 still gets per-channel weights; NHWC and uint8 image inputs are one-line errors naming
the input; a model is identified by its graph and its weights, however they are stored."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant._io import file_sha256, model_digests, model_identity
from fcnquant.cli import main
from fcnquant.errors import ModelError
from fcnquant.runtime import check_model_runs
from tests.quantize.helpers import images, make_table, save_model, tiny_fcn
from tests.test_evaluate import B, W, conv_model

DATA_ARGS = ["--size", "24", "--num-images", "2", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    """(folder, voc root): the float model m.onnx (a 1x1 Conv 3 -> 21, opset 17), its int8 model q.onnx, and the
    odd variants built from it with onnx.helper (opset 11, NHWC input, uint8 input, float16)."""
    base = tmp_path_factory.mktemp("badmodels")
    data = synthetic_voc(train=2, val=2, size=32, seed=2)
    m = conv_model(base / "m.onnx")
    assert main(["calibrate", str(m), "--data", str(data), *DATA_ARGS, "--out", str(base / "q.onnx"),
                 "--out-table", str(base / "q.json")]) == 0
    model = onnx.load(str(m))
    model.opset_import[0].version, model.ir_version = 11, 6
    save_model(model, base / "m11.onnx")
    for name, first, x in (("nhwc", helper.make_node("Transpose", ["xin"], ["x"], perm=[0, 3, 1, 2]),
                            helper.make_tensor_value_info("xin", TensorProto.FLOAT, ["n", "h", "w", 3])),
                           ("u8", helper.make_node("Cast", ["xin"], ["x"], to=TensorProto.FLOAT),
                            helper.make_tensor_value_info("xin", TensorProto.UINT8, ["n", 3, "h", "w"]))):
        odd = onnx.load(str(m))
        odd.graph.node.insert(0, first)
        odd.graph.input[0].CopyFrom(x)
        save_model(odd, base / f"{name}.onnx")
    assert main(["fp16", str(m), "--out", str(base / "f16.onnx")]) == 0
    return base, data


def _bad(argv, capsys, cmd, words, *keep):
    """Runs argv, asserts exit 2 with one stderr line containing each of ``words``, and ``keep`` files unchanged."""
    before = {p: p.read_bytes() for p in keep}
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fcnquant {cmd}: error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    for p, data in before.items():
        assert p.read_bytes() == data


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _calibration_images(data, ids) -> list[np.ndarray]:
    """The images of the ids file under the preset calibrate uses for the dynamic 1x1 Conv (awesome, 24)."""
    from fcnquant.data import get_preset, open_dataset

    ds, preset = open_dataset(data, "train"), get_preset("awesome", size=24)
    return [preset.transform(*ds.load_pair(i))[0] for i in ids.read_text().split()]


def _opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


# --- item: a written model must load ------------------------------------------------------------------------------

def test_an_opset_11_model_calibrates_to_an_int8_model_that_runs(setup, tmp_path):
    base, data = setup
    q, t = tmp_path / "q11.onnx", tmp_path / "t11.json"
    assert main(["calibrate", str(base / "m11.onnx"), "--data", str(data), *DATA_ARGS, "--method", "minmax",
                 "--out", str(q), "--out-table", str(t), "--save-ids", str(tmp_path / "ids.txt")]) == 0
    assert _opset(q) == 13  # DequantizeLinear's per-channel axis exists from opset 13 on
    axes = [a.i for n in onnx.load(str(q)).graph.node if n.op_type == "DequantizeLinear"
            for a in n.attribute if a.name == "axis"]
    assert axes  # per-channel weights, as asked, not per-tensor
    # the same graph at opset 17, emitted from the same table, computes the same int8 model
    from fcnquant.quantize import quantize_model

    ref = quantize_model(base / "m.onnx", t, tmp_path / "q17.onnx", verify_table=False).path
    for x in _calibration_images(data, tmp_path / "ids.txt"):
        x = x[None].astype(np.float32)
        np.testing.assert_array_equal(_run(q, x), _run(ref, x))
        # and within a few int8 steps of the float model W x + b (minmax ranges: nothing clipped)
        want = np.einsum("oc,nchw->nohw", W[:, :, 0, 0], x) + B[None, :, None, None]
        assert np.abs(_run(q, x) - want).max() < 0.05 * np.abs(want).max()


def test_an_opset_11_graph_with_resize_converts_to_the_same_int8_model(tmp_path):
    """Resize takes roi and scales inputs at opset 11; the version converter keeps every tensor name."""
    model = tiny_fcn()
    model.opset_import[0].version, model.ir_version = 11, 6
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), "empty"))
    for n in model.graph.node:
        if n.op_type == "Resize":
            n.input[1], n.input[2] = "empty", "empty"
    onnx.checker.check_model(model, full_check=True)
    m11 = save_model(model, tmp_path / "m11.onnx")
    m17 = save_model(tiny_fcn(), tmp_path / "m17.onnx")
    xs = images((1, 3, 16, 16))
    from fcnquant.quantize import quantize_model

    table = make_table(m11, xs, "ort-cpu")
    q11 = quantize_model(m11, table, tmp_path / "q11.onnx").path
    q17 = quantize_model(m17, table, tmp_path / "q17.onnx", verify_table=False).path
    assert _opset(q11) == 13
    for x in xs:
        np.testing.assert_array_equal(_run(q11, x), _run(q17, x))


def test_a_written_model_onnxruntime_refuses_leaves_nothing(setup, tmp_path, capsys, monkeypatch):
    """Without the opset conversion the opset-11 int8 model has per-channel DequantizeLinear nodes onnxruntime
    refuses; the load check turns that into exit 2, and no artifact of the run is written."""
    from fcnquant.quantize import qdq

    base, data = setup
    monkeypatch.setattr(qdq, "_with_per_axis_opset", lambda model, label: model)
    out = tmp_path / "out"
    out.mkdir()
    _bad(["calibrate", base / "m11.onnx", "--data", data, *DATA_ARGS, "--out", out / "q.onnx", "--out-table",
          out / "t.json", "--save-stats", out / "s.npz"], capsys, "calibrate",
         ["does not load in onnxruntime", "axis", "nothing was written"], base / "m11.onnx")
    assert list(out.iterdir()) == []


def test_a_model_the_converter_cannot_convert_is_one_line(setup, tmp_path, capsys, monkeypatch):
    from onnx import version_converter

    base, data = setup

    def fails(model, version):
        raise RuntimeError("adapter_lookup: Assertion `false` failed:\nNo Adapter From Version $11 for Foo")

    monkeypatch.setattr(version_converter, "convert_version", fails)
    _bad(["calibrate", base / "m11.onnx", "--data", data, *DATA_ARGS, "--out", tmp_path / "q.onnx"], capsys,
         "calibrate", ["opset 11", "per-tensor", "No Adapter"], base / "m11.onnx")
    assert list(tmp_path.iterdir()) == []
    # per-tensor weights need no axis: the model keeps its opset and runs
    q = tmp_path / "qt.onnx"
    assert main(["calibrate", str(base / "m11.onnx"), "--data", str(data), *DATA_ARGS, "--per-tensor",
                 "--out", str(q), "--out-table", str(tmp_path / "t.json")]) == 0
    assert _opset(q) == 11
    check_model_runs(q)


@pytest.mark.parametrize("cmd, argv", [
    ("calibrate", ["calibrate", "{q}", "--data", "{d}", *DATA_ARGS, "--out", "{o}/x.onnx"]),
    ("calibrate", ["calibrate", "{q}", "--data", "{d}", *DATA_ARGS, "--out-table", "{o}/x.json"]),
    ("quantize", ["quantize", "{q}", "--table", "{t}", "--out", "{o}/x.onnx"]),
    ("fp16", ["fp16", "{q}", "--out", "{o}/x.onnx"]),
    ("equalize", ["equalize", "{q}", "--out", "{o}/x.onnx"]),
    ("tune", ["tune", "{q}", "--data", "{d}", "--max-drop", "1", "--out", "{o}/x.onnx"]),
])
def test_an_already_quantized_model_is_refused_up_front(setup, tmp_path, capsys, cmd, argv):
    base, data = setup
    q = base / "q.onnx"
    _bad([a.format(q=q, d=data, t=base / "q.json", o=tmp_path) for a in argv], capsys, cmd,
         [f"{q.name} is already quantized (QuantizeLinear/DequantizeLinear nodes); {cmd} takes a float model"], q)
    assert list(tmp_path.iterdir()) == []


def test_fp16_of_an_int8_model_is_refused_in_a_fresh_process(setup, tmp_path):
    """The same check through `python -m fcnquant`: exit 2, one line on stderr, no traceback."""
    base, _ = setup
    proc = subprocess.run([sys.executable, "-m", "fcnquant", "fp16", str(base / "q.onnx"), "--out",
                           str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "already quantized" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_model_runs_names_what_onnxruntime_refuses(tmp_path):
    """A per-channel DequantizeLinear at opset 11 (the original failure), and a model that loads but cannot run."""
    w = numpy_helper.from_array(np.ones((2, 3), np.int8), "w")
    s = numpy_helper.from_array(np.ones(2, np.float32), "s")
    dq = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=0)
    graph = helper.make_graph([dq], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w, s])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    bad.ir_version = 6
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError) as info:
        check_model_runs(tmp_path / "bad.onnx", "out.onnx")
    msg = str(info.value)
    assert "the model written for out.onnx does not load" in msg and "axis" in msg and "\n" not in msg
    # a Reshape to a size the input does not have: loads, fails at run time (at every probe size)
    shape = numpy_helper.from_array(np.array([7, 5], np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "r.onnx"))
    with pytest.raises(ModelError, match="loads but does not run"):
        check_model_runs(tmp_path / "r.onnx")


def test_check_model_runs_probes_dynamic_nhwc_and_external_weights(setup, tmp_path):
    base, _ = setup
    check_model_runs(base / "nhwc.onnx")  # 1 x 64 x 64 x 3, not 1 x 3 x 64 x 3
    model = onnx.load(str(base / "m.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    check_model_runs(tmp_path / "ext.onnx")  # the session opens the file: its .data is found beside it


# --- item: inputs the data feeding does not produce -------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["calibrate", "eval"])
@pytest.mark.parametrize("name, words", [
    ("nhwc", ["input 'xin'", "nxhxwx3", "channels last (NHWC)", "NCHW"]),
    ("u8", ["input 'xin'", "type uint8", "float"]),
])
def test_nhwc_and_uint8_inputs_are_one_line_naming_the_input(setup, tmp_path, capsys, cmd, name, words):
    base, data = setup
    m = base / f"{name}.onnx"
    extra = ["--out-table", tmp_path / "t.json"] if cmd == "calibrate" else ["--json", tmp_path / "e.json"]
    _bad([cmd, m, "--data", data, "--size", "24", "--no-progress", *extra], capsys, cmd, words, m)
    assert list(tmp_path.iterdir()) == []


def test_a_float16_model_calibrates_to_a_table_but_emits_no_int8_model(setup, tmp_path, capsys):
    """Its float16 input is fed float16 images (as eval does); the table's ranges are those of W x + b on the
    calibration images within float16 precision. Int8 emission from it is refused before any inference."""
    base, data = setup
    f16 = base / "f16.onnx"
    _bad(["calibrate", f16, "--data", data, *DATA_ARGS, "--out", tmp_path / "q.onnx"], capsys, "calibrate",
         ["float16 model", "float32"], f16)
    assert list(tmp_path.iterdir()) == []
    t = tmp_path / "t.json"
    assert main(["calibrate", str(f16), "--data", str(data), *DATA_ARGS, "--method", "minmax",
                 "--out-table", str(t), "--save-ids", str(tmp_path / "ids.txt")]) == 0
    from fcnquant.calibrate.table import CalibrationTable

    entry = CalibrationTable.load(t).tensors["y"]
    ys = [np.einsum("oc,chw->ohw", W[:, :, 0, 0].astype(np.float64), x) + B[:, None, None]
          for x in _calibration_images(data, tmp_path / "ids.txt")]
    lo, hi = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
    assert entry.lo == pytest.approx(lo, rel=5e-3, abs=5e-3) and entry.hi == pytest.approx(hi, rel=5e-3, abs=5e-3)


# --- item: model identity ---------------------------------------------------------------------------------------

def _ext(model, path):
    onnx.save(model, str(path), save_as_external_data=True, location=path.stem + ".data", size_threshold=0)
    return path


def test_identity_is_graph_and_weights_however_stored(setup, tmp_path):
    base, _ = setup
    inline = base / "m.onnx"
    ext = _ext(onnx.load(str(inline)), tmp_path / "ext.onnx")
    resaved = tmp_path / "resaved.onnx"  # loaded from external data and saved inline: data_location marks kept
    onnx.save(onnx.load(str(ext)), str(resaved))
    assert resaved.read_bytes() != inline.read_bytes()
    ident = file_sha256(inline)  # an inline file: the sha256 of its bytes, as recorded before
    assert model_identity(inline) == model_identity(ext) == model_identity(resaved) == ident
    assert model_identity(onnx.load(str(ext))) == ident  # a loaded ModelProto too
    assert model_digests(resaved) == (ident, file_sha256(resaved))  # its old digest (file bytes) still accepted
    assert model_digests(ext) == (ident,)  # not the .onnx stub's bytes alone
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 1  # one bit of one weight
    (tmp_path / "ext.data").write_bytes(bytes(data))
    changed = onnx.load(str(inline))
    w = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    w.view(np.uint8).reshape(-1)[0] ^= 1
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, changed.graph.initializer[0].name))
    onnx.save(changed, str(tmp_path / "changed.onnx"))
    assert model_identity(ext) == model_identity(tmp_path / "changed.onnx") != ident


def test_a_table_follows_the_weights_not_the_file_layout(setup, tmp_path, capsys):
    """A table made on the inline model fits its external-data copy; after the .data file changes it does not."""
    base, _ = setup
    table = base / "q.json"
    ext = _ext(onnx.load(str(base / "m.onnx")), tmp_path / "ext.onnx")
    assert main(["quantize", str(ext), "--table", str(table), "--out", str(tmp_path / "a.onnx")]) == 0
    resaved = tmp_path / "resaved.onnx"
    onnx.save(onnx.load(str(ext)), str(resaved))
    assert main(["quantize", str(resaved), "--table", str(table), "--out", str(tmp_path / "b.onnx")]) == 0
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 1
    (tmp_path / "ext.data").write_bytes(bytes(data))
    capsys.readouterr()
    _bad(["quantize", ext, "--table", table, "--out", tmp_path / "c.onnx"], capsys, "quantize",
         ["was made for another model"], ext, table)
    assert not (tmp_path / "c.onnx").exists()


def test_old_tables_of_an_inline_model_stay_valid(setup, tmp_path):
    """Tables recorded the sha256 of the .onnx bytes: for an inline model that is still its identity, and for an
    inline file with data_location marks the file's sha256 is accepted beside the identity."""
    from fcnquant.calibrate.table import CalibrationTable
    from fcnquant.quantize import quantize_model

    base, _ = setup
    resaved = tmp_path / "resaved.onnx"
    onnx.save(onnx.load(str(_ext(onnx.load(str(base / "m.onnx")), tmp_path / "ext.onnx"))), str(resaved))
    old = CalibrationTable.load(base / "q.json")
    old.model_sha256 = file_sha256(resaved)
    res = quantize_model(resaved, old, tmp_path / "q.onnx")
    assert res.model_sha256 == model_identity(resaved) == file_sha256(base / "m.onnx")
