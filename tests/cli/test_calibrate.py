"""`fcnquant calibrate` and `fcnquant merge-stats` end to end on a tiny model and tiny synthetic VOC."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable
from fcnquant.cli import main

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[1,3,32,32] input) => (float[1,3,32,32] output) {
    c1 = Conv <pads = [1,1,1,1]> (input, w1, b1)
    r1 = Relu (c1)
    p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
    s1 = Conv (p1, ws1, bs1)
    output = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (s1, , sc)
}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    base = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(5)
    m = onnx.parser.parse_model(TINY)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    m.graph.initializer.extend([w("w1", 4, 3, 3, 3), w("b1", 4), w("ws1", 3, 4, 1, 1), w("bs1", 3),
                                numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")])
    onnx.save(m, str(base / "tiny.onnx"))
    return base / "tiny.onnx", synthetic_voc(train=6, val=1, size=40, seed=1)


def run(*args) -> int:
    return main(["calibrate", *map(str, args), "--no-progress"])


def tensors_of(path):
    return json.loads(path.read_text())["tensors"]


def test_full_run_then_from_stats_reproduces_the_table_exactly(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 4, "--method", "kl", "--out-table", tmp_path / "kl.json",
               "--save-stats", tmp_path / "s.npz", "--save-ids", tmp_path / "ids.txt") == 0
    out = capsys.readouterr().out
    assert "4 activation tensors" in out and "kl.json" in out and "s.npz" in out
    ids = (tmp_path / "ids.txt").read_text().split()
    assert len(ids) == 4
    table = CalibrationTable.load(tmp_path / "kl.json")
    assert table.image_ids == ids and table.method == "kl" and list(table.tensors) == ["input", "r1", "s1", "output"]

    assert run(model, "--from-stats", tmp_path / "s.npz", "--method", "kl", "--out-table", tmp_path / "kl2.json") == 0
    assert tensors_of(tmp_path / "kl2.json") == tensors_of(tmp_path / "kl.json")
    d1, d2 = (json.loads((tmp_path / f).read_text()) for f in ("kl.json", "kl2.json"))
    d1.pop("created"), d2.pop("created")
    assert d1 == d2

    # another method from the same statistics equals a fresh run with that method
    assert run(model, "--from-stats", tmp_path / "s.npz", "--method", "percentile", "--percentile", 99.9,
               "--out-table", tmp_path / "p_stats.json") == 0
    assert run(model, "--data", voc, "--ids-file", tmp_path / "ids.txt", "--method", "percentile", "--percentile",
               99.9, "--out-table", tmp_path / "p_run.json") == 0
    assert tensors_of(tmp_path / "p_stats.json") == tensors_of(tmp_path / "p_run.json")


def test_minmax_table_and_trt_cache(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 2, "--method", "minmax", "--target", "tensorrt",
               "--out-table", tmp_path / "t.json", "--trt-cache", tmp_path / "t.cache") == 0
    assert "0 of 4 tensors clipped" in capsys.readouterr().out
    for e in tensors_of(tmp_path / "t.json").values():
        assert (e["lo"], e["hi"]) == (e["min"], e["max"])
    lines = (tmp_path / "t.cache").read_text().splitlines()
    assert lines[0].startswith("TRT-") and len(lines) == 5


def test_shards_merge_to_the_single_run(setup, tmp_path, capsys):
    model, voc = setup
    common = ("--data", voc, "--num-images", 5)
    assert run(model, *common, "--save-stats", tmp_path / "all.npz", "--out-table", tmp_path / "all.json") == 0
    for i in (1, 2):
        assert run(model, *common, "--shard", f"{i}/2", "--save-stats", tmp_path / f"s{i}.npz") == 0
    assert not list(tmp_path.glob("*.calib.json"))  # a shard run writes no table unless asked
    assert main(["merge-stats", str(tmp_path / "s2.npz"), str(tmp_path / "s1.npz"), "--out",
                 str(tmp_path / "m.npz")]) == 0
    assert "5 images" in capsys.readouterr().out
    full, merged = CalibrationStats.load(tmp_path / "all.npz"), CalibrationStats.load(tmp_path / "m.npz")
    assert merged.image_ids == full.image_ids and merged.shard is None
    for name in full.tensors:
        for key, arr in full.tensors[name].state().items():
            np.testing.assert_array_equal(merged.tensors[name].state()[key], arr)
    assert run(model, "--from-stats", tmp_path / "m.npz", "--out-table", tmp_path / "m.json") == 0
    assert tensors_of(tmp_path / "m.json") == tensors_of(tmp_path / "all.json")


def test_errors_exit_2_and_leave_nothing_behind(setup, tmp_path, capsys):
    model, voc = setup
    before = set(tmp_path.iterdir())
    # unwritable table location: refused before any inference, so the statistics are not written either
    assert run(model, "--data", voc, "--num-images", 2, "--save-stats", tmp_path / "s.npz",
               "--out-table", tmp_path / "missing" / "t.json") == 2
    assert "output folder does not exist" in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == before
    assert run(model, "--data", voc, "--shard", "1/2") == 2
    assert "--save-stats" in capsys.readouterr().err
    assert run(model, "--data", voc, "--method", "kl", "--param", "num_bins") == 2
    assert run(model, "--data", voc, "--method", "kl", "--param", "bogus=1", "--out-table", tmp_path / "x.json") == 2
    assert "bogus" in capsys.readouterr().err
    assert run(model, "--data", voc, "--ids-file", tmp_path / "nope.txt", "--out-table", tmp_path / "x.json") == 2
    assert run(model, "--from-stats", tmp_path / "nope.npz", "--out-table", tmp_path / "x.json") == 2
    assert "not found" in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == before


def test_from_stats_refuses_another_model(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 1, "--save-stats", tmp_path / "s.npz",
               "--out-table", tmp_path / "t.json") == 0
    other = onnx.load(str(model))
    other.doc_string = "changed"
    onnx.save(other, str(tmp_path / "other.onnx"))
    assert run(tmp_path / "other.onnx", "--from-stats", tmp_path / "s.npz", "--out-table", tmp_path / "o.json") == 2
    assert "different model" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_default_data_is_the_builtin_synthetic_voc(setup, tmp_path, monkeypatch, capsys):
    """No --data: the built-in synthetic VOC (stubbed here with the tiny one to keep the test fast)."""
    model, voc = setup
    import fcnquant.data

    monkeypatch.setattr(fcnquant.data, "builtin_dataset", lambda **kw: voc)
    monkeypatch.chdir(tmp_path)
    assert run(model, "--num-images", 2, "--table-only") == 0
    assert (tmp_path / "tiny.calib.json").is_file()
    assert "2 image(s)" in capsys.readouterr().out


def test_out_emits_the_same_int8_model_as_quantize(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 3, "--out-table", tmp_path / "t.json",
               "--out", tmp_path / "a.int8.onnx") == 0
    assert "a.int8.onnx" in capsys.readouterr().out
    assert main(["quantize", str(model), "--table", str(tmp_path / "t.json"), "--out", str(tmp_path / "b.int8.onnx")]) == 0
    a, b = (onnx.load(str(tmp_path / f)) for f in ("a.int8.onnx", "b.int8.onnx"))
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)
    assert sum(n.op_type == "QuantizeLinear" for n in a.graph.node) >= 3


def test_out_needs_the_full_statistics(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--shard", "1/2", "--save-stats", tmp_path / "s.npz",
               "--out", tmp_path / "x.onnx") == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_cli_refuses_ray_with_a_single_shard(tmp_path, capsys):
    from fcnquant.cli import main
    from fcnquant.demo_models import demo_model_path

    model = str(demo_model_path("fcn8s"))
    stats = str(tmp_path / "s.npz")
    assert main(["calibrate", model, "--ray", "--shard", "1/2", "--save-stats", stats]) == 2
    assert main(["calibrate", model, "--ray", "--from-stats", stats]) == 2
    assert main(["calibrate", model, "--shards", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("--ray runs every shard of the collection on the cluster") == 2
    assert "--shards sets the number of shards of a --ray run: add --ray" in err
    assert list(tmp_path.iterdir()) == []


def test_provider_cpu_gives_the_same_table_and_cuda_stops_before_any_work(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 3, "--out-table", tmp_path / "a.json") == 0
    assert run(model, "--data", voc, "--num-images", 3, "--out-table", tmp_path / "b.json", "--provider", "cpu") == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    a.pop("created"), b.pop("created")  # the time of writing: the two runs may fall on either side of a second
    assert a == b
    capsys.readouterr()
    out = tmp_path / "gpu"
    out.mkdir()
    assert run(model, "--data", voc, "--num-images", 3, "--out-table", out / "t.json", "--save-stats", out / "s.npz",
               "--provider", "cuda") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "onnxruntime-gpu" in err and list(out.iterdir()) == []


def test_default_writes_int8_model_table_and_stats_beside_the_model_and_prints_compare(setup, tmp_path, capsys):
    import shutil

    import onnxruntime as ort

    model, voc = setup
    folder = tmp_path / "work"
    folder.mkdir()
    local = shutil.copy(model, folder / "tiny.onnx")
    assert run(local, "--data", voc, "--num-images", 2) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.calib.json", "tiny.int8.onnx", "tiny.onnx",
                                                        "tiny.stats.npz"]
    ort.InferenceSession(str(folder / "tiny.int8.onnx"), providers=["CPUExecutionProvider"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"next: fcnquant compare {local} {folder / 'tiny.int8.onnx'} --data {voc} "
                    f"--table {folder / 'tiny.calib.json'} --stats {folder / 'tiny.stats.npz'}")
    # the printed command parses as printed (the tiny model's 3 classes do not fit the VOC masks to run it)
    from fcnquant.cli import build_parser

    parsed = build_parser().parse_args(last.split()[2:])
    assert parsed.table == str(folder / "tiny.calib.json") and parsed.stats == str(folder / "tiny.stats.npz")


def test_out_dir_holds_the_defaults_and_explicit_flags_override_single_paths(setup, tmp_path, capsys):
    model, voc = setup
    out = tmp_path / "new" / "dir"
    assert run(model, "--data", voc, "--num-images", 2, "--out-dir", out, "--out-table", tmp_path / "t.json") == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny.int8.onnx", "tiny.stats.npz"]
    assert (tmp_path / "t.json").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("next: fcnquant compare ")


def test_table_only_writes_only_the_table_in_the_current_folder(setup, tmp_path, monkeypatch, capsys):
    model, voc = setup
    monkeypatch.chdir(tmp_path)
    assert run(model, "--data", voc, "--num-images", 2, "--table-only") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.calib.json"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"next: fcnquant quantize {model} --table tiny.calib.json --target ort-cpu --out tiny.int8.onnx")
    assert run(model, "--data", voc, "--table-only", "--out", tmp_path / "x.onnx") == 2
    assert "--table-only" in capsys.readouterr().err


def test_from_stats_default_emits_without_writing_the_statistics_again(setup, tmp_path, capsys):
    model, voc = setup
    assert run(model, "--data", voc, "--num-images", 2, "--save-stats", tmp_path / "s.npz",
               "--out-table", tmp_path / "t.json") == 0
    assert not (tmp_path / "tiny.int8.onnx").exists()  # explicit flags alone: only what they name
    out = tmp_path / "o"
    assert run(model, "--from-stats", tmp_path / "s.npz", "--out-dir", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny.calib.json", "tiny.int8.onnx"]
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(f"--stats {tmp_path / 's.npz'}")


def test_default_image_count_agrees_with_the_library():
    from fcnquant.cli.calibrate import DEFAULT_IMAGES
    from fcnquant.workflows import DEFAULT_CALIBRATION_IMAGES

    assert DEFAULT_IMAGES == DEFAULT_CALIBRATION_IMAGES == 100


def test_bias_correction_takes_its_form(setup, tmp_path, capsys):
    from fcnquant.recover.plan import read_recovery

    model, voc = setup
    common = ["--data", voc, "--num-images", "3", "--target", "npu-pow2", "--per-tensor"]
    forms = {}
    for name, flags in (("bare", ["--bias-correction"]), ("seq", ["--recover", "--bias-correction", "sequential"]),
                        ("off", ["--recover", "--no-bias-correction"])):
        out = tmp_path / f"{name}.int8.onnx"
        assert run(model, *common, *flags, "--out", out, "--out-table", tmp_path / f"{name}.json") == 0
        forms[name] = read_recovery(onnx.load(str(out))).get("bias_correction", {})
    assert forms["bare"]["form"] == "fast" and forms["bare"]["passes"] == 0  # from the calibration pass
    assert forms["seq"]["form"] == "sequential" and forms["seq"]["passes"] == 1 and forms["seq"]["layers"] == 1
    assert forms["off"] == {}
    capsys.readouterr()
    assert run(model, *common, "--bias-correction", "fast", "--bias-correction-error", "accumulated", "--out",
               tmp_path / "x.onnx") == 2
    assert "needs the sequential form" in capsys.readouterr().err


def test_a_small_table_only_calibration_loads_only_what_it_uses(setup, tmp_path):
    """A fresh process: parsing the command line imports none of scipy, the recovery passes, the emitters or the
    synthetic VOC generator; a one-image table-only calibrate imports none of them either, and writes the same
    table through the compiled kernel as through the numpy observers (FCNQUANT_NO_NATIVE=1)."""
    import os
    import subprocess
    import sys

    from fcnquant.observers import kernel

    model, voc = setup
    heavy = ("scipy", "fcnquant.recover.adaround", "fcnquant.recover.equalize",
             "fcnquant.recover.bias_correction", "fcnquant.recover.scale_search", "fcnquant.quantize.qdq",
             "fcnquant.data.synth")
    argv = ["calibrate", str(model), "--data", str(voc), "--num-images", "1", "--no-progress", "--method", "kl",
            "--out-table"]
    code = (
        "import sys, json\n"
        "from fcnquant.cli import build_parser, main\n"
        "build_parser()\n"
        f"heavy = {heavy!r}\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
        "assert main(sys.argv[2:] + [sys.argv[1]]) == 0\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
        "from fcnquant.observers import kernel\n"
        "print(json.dumps(kernel.available()))\n"
    )
    tables = {}
    for mode in ("native", "numpy"):
        out = tmp_path / f"{mode}.json"
        env = {k: v for k, v in os.environ.items() if k != kernel.DISABLE_ENV}
        if mode == "numpy":
            env[kernel.DISABLE_ENV] = "1"
        res = subprocess.run([sys.executable, "-c", code, str(out), *argv], capture_output=True, text=True,
                             timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        parsed, after = [json.loads(line) for line in lines if line.startswith("[")]
        assert parsed == [] and after == []
        assert json.loads(lines[-1]) is (mode == "native" and kernel.available())
        tables[mode] = {k: v for k, v in json.loads(out.read_text()).items() if k != "created"}
    assert tables["native"] == tables["numpy"]
