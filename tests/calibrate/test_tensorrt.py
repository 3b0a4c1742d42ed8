"""TensorRT calibration cache (fcnquant.calibrate.tensorrt): the hex float32 scales, and garbage refused."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from fcnquant.calibrate.table import build_table
from fcnquant.calibrate.tensorrt import read_tensorrt_cache, write_tensorrt_cache
from fcnquant.errors import CalibrationError
from tests.calibrate.helpers import sample_stats


def test_tensorrt_cache_hex(tmp_path):
    table = build_table(sample_stats(), "kl", "ort-cpu")
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
    trt = build_table(sample_stats(), "kl", "tensorrt")
    trt.write_tensorrt_cache(tmp_path / "trt.cache")
    assert read_tensorrt_cache(tmp_path / "trt.cache")[1] == {n: e.scale for n, e in trt.tensors.items()}


def test_tensorrt_cache_reader_rejects_garbage(tmp_path):
    (tmp_path / "a.cache").write_text("hello\n")
    with pytest.raises(CalibrationError, match="header"):
        read_tensorrt_cache(tmp_path / "a.cache")
    (tmp_path / "b.cache").write_text("TRT-8601-EntropyCalibration2\nx: 3f80\n")
    with pytest.raises(CalibrationError, match=":2:"):
        read_tensorrt_cache(tmp_path / "b.cache")
