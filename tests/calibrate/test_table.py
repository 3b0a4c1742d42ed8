"""CalibrationTable: build from statistics, JSON round trip, validation, TensorRT calibration cache."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fcnquant.calibrate.methods import compute_range
from fcnquant.calibrate.qparams import qparams
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.table import CalibrationTable, build_table
from fcnquant.calibrate.tensorrt import read_tensorrt_cache, write_tensorrt_cache
from fcnquant.errors import CalibrationError

SHA = "0f" * 32


def _stats():
    rng = np.random.default_rng(0)
    st = CalibrationStats.new(["relu1", "add: out", "logits"], model_sha256=SHA, preset={"name": "awesome"},
                              image_ids=["a", "b"], model_name="fcn.onnx")
    st.tensors["relu1"].update(np.maximum(rng.standard_normal(20_000), 0).astype(np.float32) * 3)
    st.tensors["add: out"].update(rng.laplace(size=20_000).astype(np.float32))
    st.tensors["logits"].update(rng.standard_normal(5_000).astype(np.float32) * 8 - 2)
    return st


@pytest.mark.parametrize("method,target", [("kl", "ort-cpu"), ("minmax", "tensorrt"), ("percentile", "npu-pow2"),
                                           ("mse", "ort-cpu")])
def test_build_table_entries(method, target):
    st = _stats()
    table = build_table(st, method, target, created="2024-01-01T00:00:00+00:00")
    assert table.model == "fcn.onnx" and table.model_sha256 == SHA and table.image_ids == ["a", "b"]
    assert table.method == method and table.target == target and table.preset == {"name": "awesome"}
    for name, ts in st.tensors.items():
        e = table.tensors[name]
        lo, hi = compute_range(method, ts, target=target)
        assert (e.min, e.max, e.lo, e.hi) == (ts.min, ts.max, lo, hi)
        assert (e.scale, e.zero_point) == qparams(lo, hi, target)


def test_table_json_round_trip_and_from_stats_reproducibility(tmp_path):
    st = _stats()
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
    table = build_table(_stats(), "minmax", "ort-cpu")
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
    st = _stats()
    st.tensors["never"] = type(st.tensors["relu1"]).new()
    with pytest.raises(CalibrationError, match="never"):
        build_table(st, "kl", "ort-cpu")


def test_tensorrt_cache_hex(tmp_path):
    table = build_table(_stats(), "kl", "ort-cpu")
    path = write_tensorrt_cache(table, tmp_path / "calib.cache")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert len(lines) == 1 + len(table.tensors)
    for line, (name, e) in zip(lines[1:], table.tensors.items()):
        amax = max(abs(e.lo), abs(e.hi))
        expect = struct.pack(">f", np.float32(amax / 127)).hex()
        assert line == f"{name}: {expect}"
    header, scales = read_tensorrt_cache(path)
    assert header == "TRT-8601-EntropyCalibration2"
    for name, e in table.tensors.items():
        assert scales[name] == float(np.float32(max(abs(e.lo), abs(e.hi)) / 127))
    # for a tensorrt table the cache holds exactly the table's scales
    trt = build_table(_stats(), "kl", "tensorrt")
    trt.write_tensorrt_cache(tmp_path / "trt.cache")
    assert read_tensorrt_cache(tmp_path / "trt.cache")[1] == {n: e.scale for n, e in trt.tensors.items()}


def test_tensorrt_cache_reader_rejects_garbage(tmp_path):
    (tmp_path / "a.cache").write_text("hello\n")
    with pytest.raises(CalibrationError, match="header"):
        read_tensorrt_cache(tmp_path / "a.cache")
    (tmp_path / "b.cache").write_text("TRT-8601-EntropyCalibration2\nx: 3f80\n")
    with pytest.raises(CalibrationError, match=":2:"):
        read_tensorrt_cache(tmp_path / "b.cache")
