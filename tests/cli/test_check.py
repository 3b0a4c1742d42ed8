"""``fcnquant check`` and ``--target FILE`` from the command line, on the demo fcn8s at npu-pow2."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
from onnx import numpy_helper

from fcnquant.cli import main
from fcnquant.demo_models import demo_model_path
from fcnquant.targets import builtin_path

#: the Conv kept in float in the excluded-Conv model
EXCLUDED = "/pool4/pretrained.19/Conv"


def calibrate(out, *extra):
    rc = main(["calibrate", str(demo_model_path("fcn8s")), "--num-images", "3", "--per-tensor", "--no-progress",
               "--out", str(out), "--out-table", str(out.with_suffix(".json")), *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def npu_models(tmp_path_factory):
    """The demo fcn8s at npu-pow2 (per-tensor weights): from the built-in name, from a copy of its file, and with
    one Conv excluded to float; and the copied file."""
    folder = tmp_path_factory.mktemp("npu")
    copy = shutil.copy(builtin_path("npu-pow2"), folder / "my-npu.toml")
    paths = {
        "builtin": calibrate(folder / "builtin.onnx", "--target", "npu-pow2"),
        "file": calibrate(folder / "file.onnx", "--target", str(copy)),
        "excluded": calibrate(folder / "excluded.onnx", "--target", "npu-pow2", "--exclude", EXCLUDED),
    }
    return paths, copy


def meta(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_a_copy_of_the_builtin_file_gives_the_same_int8_model(npu_models):
    paths, copy = npu_models
    a, b = onnx.load(str(paths["builtin"])), onnx.load(str(paths["file"]))
    assert [(n.op_type, n.name, list(n.input), list(n.output), [x.SerializeToString() for x in n.attribute])
            for n in a.graph.node] == [(n.op_type, n.name, list(n.input), list(n.output),
                                        [x.SerializeToString() for x in n.attribute]) for n in b.graph.node]
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys()
    for name in ia:
        assert ia[name].dtype == ib[name].dtype and ia[name].tobytes() == ib[name].tobytes(), name
    for m in (a, b):
        del m.metadata_props[:]
    assert a.SerializeToString() == b.SerializeToString()  # metadata aside, byte for byte
    ma, mb = meta(onnx.load(str(paths["builtin"]))), meta(onnx.load(str(paths["file"])))
    assert ma["fcnquant.target_source"] == "builtin:npu-pow2" and mb["fcnquant.target_source"] == str(copy)
    assert ma["fcnquant.target_sha256"] == mb["fcnquant.target_sha256"]  # the same bytes
    assert ma["fcnquant.target"] == mb["fcnquant.target"] == "npu-pow2"


def test_check_names_the_excluded_conv(npu_models, tmp_path, capsys):
    paths, _ = npu_models
    report = tmp_path / "check.json"
    rc = main(["check", str(paths["excluded"]), "--target", "npu-pow2", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.splitlines()[0].startswith(f"{EXCLUDED} (Conv): computes in float")
    d = json.loads(report.read_text())
    assert [(f["node"], f["kind"]) for f in d["findings"]] == [(EXCLUDED, "float")] and d["legal"] is False


def test_the_demo_npu_model_is_legal(npu_models, capsys):
    paths, copy = npu_models
    for path in (paths["builtin"], paths["file"]):
        for target in ("npu-pow2", str(copy)):
            assert main(["check", str(path), "--target", target]) == 0
            assert "check (npu-pow2): legal" in capsys.readouterr().out


def test_writers_print_the_verdict(npu_models, tmp_path, capsys):
    paths, _ = npu_models
    table = paths["builtin"].with_suffix(".json")
    rc = main(["quantize", str(demo_model_path("fcn8s")), "--table", str(table), "--out", str(tmp_path / "q.onnx"),
               "--target", "npu-pow2", "--per-tensor", "--exclude", EXCLUDED])
    out = capsys.readouterr().out
    assert rc == 0  # the verdict does not change the exit status
    assert f"check (npu-pow2): 1 op not integer (float: 1) - run `fcnquant check {tmp_path / 'q.onnx'} --target " \
           "npu-pow2`" in out
    rc = main(["quantize", str(demo_model_path("fcn8s")), "--table", str(table), "--out", str(tmp_path / "r.onnx"),
               "--target", "npu-pow2", "--per-tensor"])
    assert rc == 0 and "check (npu-pow2): legal" in capsys.readouterr().out


def test_bad_target_file_and_bad_input_exit_2(npu_models, tmp_path, capsys):
    paths, copy = npu_models
    bad = tmp_path / "bad.toml"
    bad.write_text(copy.read_text().replace('rounding = "half_up"', 'rounding = "up"'))
    for argv in (["check", str(paths["builtin"]), "--target", str(bad)],
                 ["quantize", str(demo_model_path("fcn8s")), "--table", str(paths["builtin"].with_suffix(".json")),
                  "--out", str(tmp_path / "q.onnx"), "--target", str(bad)],
                 ["calibrate", str(demo_model_path("fcn8s")), "--num-images", "1", "--target", str(bad),
                  "--out", str(tmp_path / "c.onnx")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and "'rounding'" in err
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "c.onnx").exists()
    assert main(["check", str(paths["builtin"]), "--target", "npu"]) == 2
    assert "unknown target 'npu'" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "none.onnx"), "--target", "npu-pow2"]) == 2
    assert main(["check", str(paths["builtin"]), "--target", "npu-pow2", "--json", str(paths["builtin"])]) == 2


def test_per_tensor_target_refuses_per_channel_emission(npu_models, tmp_path, capsys):
    paths, copy = npu_models
    strict = tmp_path / "strict.toml"
    strict.write_text(copy.read_text().replace('weight_granularity = "either"', 'weight_granularity = "per-tensor"'))
    rc = main(["quantize", str(demo_model_path("fcn8s")), "--table", str(paths["builtin"].with_suffix(".json")),
               "--out", str(tmp_path / "q.onnx"), "--target", str(strict)])
    assert rc == 2 and "--per-tensor" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()
