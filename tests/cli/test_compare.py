"""The compare subcommand: outputs, --fail-on-drop exit status, errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.cli import main
from fcnquant.compare.tensors.pairing import TENSOR_MAP_KEY
from fcnquant.data import DataConfig
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig

HW = 32


def _write(path, flip: bool) -> None:
    """Logits from one 1x1 conv whose bias makes background win everywhere; ``flip`` adds +10 to class 1.

    The flipped copy carries a tensor map, so compare measures it; its mIoU is lower (no background at all).
    """
    w = np.zeros((21, 3, 1, 1), np.float32)
    w[0, 0] = 0.1
    b = np.zeros(21, np.float32)
    b[0] = 5.0
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["raw" if flip else "output"])]
    if flip:
        shift = np.zeros((1, 21, 1, 1), np.float32)
        shift[0, 1] = 10.0
        inits.append(numpy_helper.from_array(shift, "shift"))
        nodes.append(helper.make_node("Add", ["raw", "shift"], ["output"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HW, HW])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 21, HW, HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if flip:
        entry = model.metadata_props.add()
        entry.key, entry.value = TENSOR_MAP_KEY, json.dumps({"output": "output"})
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    d = tmp_path_factory.mktemp("cli")
    voc = synthetic_voc(train=0, val=2, size=40, seed=1)
    _write(d / "f.onnx", flip=False)
    _write(d / "q.onnx", flip=True)
    quiet = RunConfig(progress=False)
    drop = evaluate(d / "f.onnx", voc, quiet).miou - evaluate(d / "q.onnx", voc, quiet).miou
    return d, voc, drop


def _args(d, voc, *extra):
    return ["compare", str(d / "f.onnx"), str(d / "q.onnx"), "--data", str(voc), "--no-progress", *map(str, extra)]


def test_fail_on_drop_exit_status(setup, capsys):
    d, voc, drop = setup
    assert drop > 1.0  # the flipped model loses the background class
    assert main(_args(d, voc, "--fail-on-drop", drop - 0.5)) == 3
    err = capsys.readouterr().err
    assert f"mIoU change {-drop:+.3f} points is below" in err and "--fail-on-drop" in err
    assert main(_args(d, voc, "--fail-on-drop", drop + 0.5)) == 0


def test_writes_json_and_html(setup, tmp_path, capsys):
    d, voc, drop = setup
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(_args(d, voc, "--json", out_json, "--report", out_html, "--top", 3, "--no-isolated")) == 0
    text = capsys.readouterr().out
    assert "worst 1 of 1 layers" in text and "mIoU float" in text
    # one sign everywhere: mIoU change = quantized - float, negative = worse
    assert f"mIoU change {-drop:+.2f} (quantized - float)" in text and " drop " not in text
    report = json.loads(out_json.read_text())
    assert report["final"]["miou_drop"] == pytest.approx(drop, abs=1e-4)  # the former key, kept
    assert report["final"]["miou_change"] == pytest.approx(-drop, abs=1e-4)
    page = out_html.read_text()
    assert "mIoU change (points, quantized - float)" in page and f"{-drop:+.2f}" in page
    assert report["isolated"] is False and report["layers"][0]["float_name"] == "output"
    assert "<svg" in page


def test_gallery_drawn_only_for_a_report(setup, tmp_path, monkeypatch, capsys):
    """The printed table shows no gallery: without --json or --report no panel is drawn; with --json the requested
    images are in the report."""
    import fcnquant.compare.api as api

    drawn = []
    real = api.render_gallery
    monkeypatch.setattr(api, "render_gallery", lambda c, *a: drawn.append(c.k) or real(c, *a))
    d, voc, _ = setup
    assert main(_args(d, voc, "--gallery", 2)) == 0
    assert main(_args(d, voc, "--gallery", 2, "--json", tmp_path / "r.json")) == 0
    assert drawn == [0, 2]
    assert len(json.loads((tmp_path / "r.json").read_text())["gallery"]) == 2


def test_errors_exit_2(setup, tmp_path, capsys):
    d, voc, _ = setup
    assert main(["compare", str(tmp_path / "missing.onnx"), str(d / "q.onnx"), "--data", str(voc)]) == 2
    assert "fcnquant compare: error:" in capsys.readouterr().err
    # the float model compared with itself has no quantized tensor to measure
    assert main(["compare", str(d / "f.onnx"), str(d / "f.onnx"), "--data", str(voc), "--no-progress"]) == 2
    assert "no quantized activation" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fail_on_drop_needs_labels(setup, tmp_path, capsys):
    d, voc, _ = setup
    folder = tmp_path / "imgs"
    folder.mkdir()
    for jpg in (voc / "VOC2012" / "JPEGImages").glob("*.jpg"):
        (folder / jpg.name).write_bytes(jpg.read_bytes())
    args = ["compare", str(d / "f.onnx"), str(d / "q.onnx"), "--data", str(folder), "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--fail-on-drop", "0.5"]) == 2
    assert "needs labelled data" in capsys.readouterr().err


def test_the_parser_constants_are_the_librarys():
    from fcnquant.cli import compare as compare_cli
    from fcnquant.cli import tune as tune_cli
    from fcnquant.compare.gallery import GALLERY_IMAGES
    from fcnquant.tune.builder import FALLBACKS
    from fcnquant.tune.ranking import RANKINGS

    assert compare_cli.GALLERY_IMAGES == GALLERY_IMAGES
    assert (tune_cli.FALLBACKS, tune_cli.RANKINGS) == (FALLBACKS, RANKINGS)


def test_html_header_names_how_the_int8_model_was_made(demo_int8, tmp_path, capsys):
    from fcnquant.demo_models import demo_model_path

    out_html = tmp_path / "r.html"
    assert main(["compare", str(demo_model_path("fcn8s")), str(demo_int8.model), "--num-images", "2",
                 "--drift-images", "1", "--no-isolated", "--gallery", "0", "--report", str(out_html),
                 "--no-progress"]) == 0
    page = out_html.read_text()
    assert "int8 model: method kl, target ort-cpu, per-channel weights, recovery: none" in page


def _void_copy(voc, folder, keep_labels: tuple[str, ...] = ()):
    """A copy of the set ``voc`` whose masks are all 255 (void), except those of the ids in ``keep_labels``."""
    import shutil

    from PIL import Image

    shutil.copytree(voc, folder)
    for png in (folder / "VOC2012" / "SegmentationClass").glob("*.png"):
        if png.stem not in keep_labels:
            with Image.open(png) as mask:
                void = Image.new("P", mask.size, 255)
                void.putpalette(mask.getpalette())
            void.save(png)
    return folder


def test_masks_that_label_nothing_fail_eval_and_compare(setup, tmp_path, capsys):
    d, voc, _ = setup
    void = _void_copy(voc, tmp_path / "void")
    for argv in (["eval", d / "f.onnx", "--data", void, "--no-progress", "--json", tmp_path / "e.json"],
                 _args(d, void, "--json", tmp_path / "c.json"),
                 _args(d, void, "--fail-on-drop", "0.5")):  # a gate that measured nothing never passes
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fcnquant {argv[0]}: error: no labelled pixel") and "\n" not in err, err
        assert "every mask pixel is 255" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["void"]


def test_one_void_mask_among_labelled_ones_is_scored(setup, tmp_path, capsys):
    d, voc, _ = setup
    partly = _void_copy(voc, tmp_path / "partly", keep_labels=("val_000001",))
    assert main(["eval", str(d / "f.onnx"), "--data", str(partly), "--no-progress", "--json",
                 str(tmp_path / "e.json")]) == 0
    scores = json.loads((tmp_path / "e.json").read_text())
    only = evaluate(d / "f.onnx", DataConfig(voc, ids=("val_000001",)), RunConfig(progress=False))
    assert scores["miou"] == pytest.approx(only.miou, abs=1e-4)  # the void image adds nothing
    absent = [k for k, v in only.per_class_iou.items() if np.isnan(v)]
    assert absent and all(scores["per_class_iou"][k] is None for k in absent)  # absent classes stay NaN


def test_statistics_of_another_model_are_noted_like_such_a_table(setup, tmp_path, capsys, caplog):
    d, voc, _ = setup
    other = tmp_path / "other.npz"  # collected on the quantized copy, not on the float model compared
    assert main(["calibrate", str(d / "q.onnx"), "--data", str(voc), "--split", "val", "--no-progress",
                 "--save-stats", str(other), "--table-only", "--out-table", str(tmp_path / "t.json")]) == 0
    capsys.readouterr()
    caplog.clear()
    assert main(_args(d, voc, "--stats", other, "--json", tmp_path / "r.json")) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith(f"calibration statistics {other} was made for another model") for m in warned)
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("was made for another model" in n for n in notes)


def test_emulate_section_in_text_json_and_html(demo_int8, tmp_path, capsys):
    from fcnquant.compare.report.compare_report import CompareReport
    from fcnquant.demo_models import demo_model_path

    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["compare", str(demo_model_path("fcn8s")), str(demo_int8.model), "--num-images", "2",
                 "--drift-images", "1", "--no-isolated", "--gallery", "0", "--emulate", "--target", "npu-pow2",
                 "--json", str(out_json), "--report", str(out_html), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "emulated integer arithmetic: target npu-pow2, rounding half_up" in text
    d = json.loads(out_json.read_text())
    assert d["emulation"]["arithmetic"]["rounding"] == "half_up"
    assert d["emulation"]["miou_simulated"] == pytest.approx(d["final"]["miou_quant"], abs=1e-3)
    assert CompareReport.from_dict(d).emulation == d["emulation"]
    assert "Emulated integer arithmetic (npu-pow2)" in out_html.read_text()
