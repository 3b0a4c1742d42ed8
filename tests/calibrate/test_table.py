"""CalibrationTable: build from statistics, JSON round trip, validation."""
from __future__ import annotations

import json

import pytest

from fcnquant.calibrate.methods import compute_range
from fcnquant.calibrate.qparams import qparams
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable, build_table
from fcnquant.errors import CalibrationError
from tests.calibrate.helpers import SAMPLE_SHA256, sample_stats


@pytest.mark.parametrize("method,target", [("kl", "ort-cpu"), ("minmax", "tensorrt"), ("percentile", "npu-pow2"),
                                           ("mse", "ort-cpu")])
def test_build_table_entries(method, target):
    st = sample_stats()
    table = build_table(st, method, target, created="2024-01-01T00:00:00+00:00")
    assert table.model == "fcn.onnx" and table.model_sha256 == SAMPLE_SHA256 and table.image_ids == ["a", "b"]
    assert table.method == method and table.target == target and table.preset == {"name": "awesome"}
    for name, ts in st.tensors.items():
        e = table.tensors[name]
        lo, hi = compute_range(method, ts, target=target)
        assert (e.min, e.max, e.lo, e.hi) == (ts.min, ts.max, lo, hi)
        assert (e.scale, e.zero_point) == qparams(lo, hi, target)


def test_table_json_round_trip_and_from_stats_reproducibility(tmp_path):
    st = sample_stats()
    table = build_table(st, "kl", "ort-cpu", num_quantized_bins=64)
    assert table.params == {"num_bins": 2048, "num_quantized_bins": 64, "eps": 1e-4, "asymmetric": False,
                            "zero_bin": "neighbour"}
    path = table.save(tmp_path / "calib.json")
    back = CalibrationTable.load(path)
    assert back.to_dict() == table.to_dict()
    d = json.loads(path.read_text())
    assert d["format_version"] == 1 and set(d["tensors"]["relu1"]) == {"min", "max", "lo", "hi", "scale",
                                                                      "zero_point"}
    again = build_table(CalibrationStats.load(st.save(tmp_path / "s.npz")), "kl", "ort-cpu", num_quantized_bins=64)
    assert again.tensors == table.tensors


def test_table_validation_names_the_tensor(tmp_path):
    table = build_table(sample_stats(), "minmax", "ort-cpu")
    d = table.to_dict()
    d["tensors"]["logits"]["scale"] = 0.0
    with pytest.raises(CalibrationError, match="logits.*scale"):
        CalibrationTable.from_dict(d)
    d["tensors"]["logits"]["scale"] = float("nan")
    p = tmp_path / "nan.json"
    p.write_text(json.dumps(d))  # Python writes NaN; the loader must refuse it
    with pytest.raises(CalibrationError, match="logits"):
        CalibrationTable.load(p)
    d = table.to_dict()
    d["tensors"]["relu1"]["zero_point"] = 300
    with pytest.raises(CalibrationError, match="relu1.*zero point"):
        CalibrationTable.from_dict(d)
    d = table.to_dict()
    d["format_version"] = 2
    with pytest.raises(CalibrationError, match="newer"):
        CalibrationTable.from_dict(d)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CalibrationError, match="not a readable"):
        CalibrationTable.load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="not found"):
        CalibrationTable.load(tmp_path / "none.json")


def test_build_table_names_an_empty_tensor():
    st = sample_stats()
    st.tensors["never"] = type(st.tensors["relu1"]).new()
    with pytest.raises(CalibrationError, match="never"):
        build_table(st, "kl", "ort-cpu")


def test_table_of_a_target_file_loads_back_with_that_target(tmp_path):
    """A table computed for a target file records the file's name, source, sha256 and keys; it loads back with
    the same target (no file needed), and its entries are those of the built-in the file copies."""
    import hashlib
    import shutil

    from fcnquant.targets import TARGETS, builtin_path, get_target

    text = builtin_path("npu-pow2").read_text(encoding="utf-8").replace('name = "npu-pow2"', 'name = "my-npu"')
    (tmp_path / "my.toml").write_text(text, encoding="utf-8")
    target = get_target(str(tmp_path / "my.toml"))
    st = sample_stats()
    table = build_table(st, "kl", target, created="2024-01-01T00:00:00+00:00", pow2_rounding="error")
    builtin = build_table(st, "kl", "npu-pow2", created="2024-01-01T00:00:00+00:00", pow2_rounding="error")
    assert table.tensors == builtin.tensors and table.target == "my-npu"
    path = table.save(tmp_path / "calib.json")
    d = json.loads(path.read_text())
    assert d["target"] == "my-npu" and "target_file" not in builtin.to_dict()
    assert d["target_file"]["source"] == str(tmp_path / "my.toml")
    assert d["target_file"]["sha256"] == hashlib.sha256((tmp_path / "my.toml").read_bytes()).hexdigest()
    (tmp_path / "my.toml").unlink()
    back = CalibrationTable.load(path)
    assert back.resolved_target == target and back.to_dict() == table.to_dict()
    assert back.resolved_target.arithmetic() == TARGETS["npu-pow2"].arithmetic()
    shutil.copy(path, tmp_path / "bad.json")
    d["target_file"]["spec"]["rounding"] = "sideways"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="bad.json: target_file.*'rounding'"):
        CalibrationTable.load(tmp_path / "bad.json")
