"""`fcnquant eval --provider`: cpu is today's run bit for bit; a provider the build lacks fails before any work."""
from __future__ import annotations

import json

import pytest

from fcnquant.cli import main

TIMINGS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory, synthetic_voc):
    from tests.test_evaluate import conv_model

    base = tmp_path_factory.mktemp("eval-provider")
    return conv_model(base / "m.onnx"), synthetic_voc(train=1, val=3, size=32, seed=2)


def _eval(model, data, out, *extra) -> int:
    return main(["eval", str(model), "--data", str(data), "--size", "24", "--json", str(out), "--no-progress",
                 *extra])


def test_provider_cpu_equals_no_provider(model_and_data, tmp_path):
    model, data = model_and_data
    assert _eval(model, data, tmp_path / "a.json") == 0
    assert _eval(model, data, tmp_path / "b.json", "--provider", "cpu") == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    for d in (a, b):
        for k in TIMINGS:
            d.pop(k)
    assert a == b


@pytest.mark.parametrize("name, words", [("cuda", "onnxruntime-gpu"), ("bogus", "available in this onnxruntime")])
def test_a_missing_or_unknown_provider_exits_2_with_one_line(model_and_data, tmp_path, capsys, name, words):
    model, data = model_and_data
    assert _eval(model, data, tmp_path / "o.json", "--provider", name) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnquant eval: error:") and words in err and "\n" not in err
    assert "CPUExecutionProvider" in err and list(tmp_path.iterdir()) == []


def _photo_set(voc, folder, orientation: int | None):
    """A copy of ``voc`` with its images as lossless PNGs: upright (``orientation`` None), or stored turned a
    quarter anticlockwise and tagged with EXIF ``orientation`` 6 (show turned a quarter clockwise), as a phone
    stores a photo taken upright. The masks stay as drawn on the upright image."""
    import shutil

    import numpy as np
    from PIL import Image

    shutil.copytree(voc, folder)
    for jpg in (folder / "VOC2012" / "JPEGImages").glob("*.jpg"):
        with Image.open(jpg) as img:
            upright = np.asarray(img.convert("RGB"))
        jpg.unlink()
        if orientation is None:
            Image.fromarray(upright).save(jpg.with_suffix(".png"))
        else:
            exif = Image.Exif()
            exif[0x0112] = orientation
            Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(jpg.with_suffix(".png"), exif=exif)
    return folder


def test_an_exif_rotated_set_scores_as_the_upright_one(model_and_data, tmp_path):
    model, voc = model_and_data
    upright = _photo_set(voc, tmp_path / "upright", None)
    turned = _photo_set(voc, tmp_path / "turned", 6)
    assert _eval(model, upright, tmp_path / "a.json") == 0
    assert _eval(model, turned, tmp_path / "b.json") == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["miou"] is not None
    for key in ("miou", "per_class_iou", "pixel_acc", "confusion"):
        assert a[key] == b[key], key


def test_emulate_prints_and_writes_the_emulated_scores(demo_int8, tmp_path, capsys):
    """--emulate: the emulated model's table, its disagreement with onnxruntime, both in the JSON; the JSON's
    simulated mIoU is what plain `eval` reports."""
    out, plain = tmp_path / "e.json", tmp_path / "p.json"
    assert main(["eval", str(demo_int8.model), "--num-images", "2", "--emulate", "--json", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "emulated integer arithmetic: target ort-cpu, rounding half_even" in text
    assert "pixels whose class differs" in text
    assert main(["eval", str(demo_int8.model), "--num-images", "2", "--json", str(plain), "--no-progress"]) == 0
    e, p = json.loads(out.read_text()), json.loads(plain.read_text())
    assert e["emulation"]["miou_simulated"] == p["miou"]
    assert e["miou"] == e["emulation"]["miou_emulated"]
    assert len(e["emulation"]["layers"]) > 20


def test_emulate_options_exit_2_with_one_line(demo_int8, tmp_path, capsys):
    assert main(["eval", str(demo_int8.model), "--target", "npu-pow2", "--num-images", "1"]) == 2
    assert main(["eval", str(demo_int8.model), "--emulate", "--target", "bogus", "--num-images", "1"]) == 2
    err = capsys.readouterr().err
    assert "--target is used with --emulate" in err and "unknown target 'bogus'" in err
