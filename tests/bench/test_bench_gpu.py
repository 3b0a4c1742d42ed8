"""bench/bench_gpu.py: the tables it writes, checked on hand-made runs and calibration tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def _table(path: Path, ranges: dict) -> Path:
    path.write_text(json.dumps({"tensors": {k: {"lo": lo, "hi": hi} for k, (lo, hi) in ranges.items()}}))
    return path


def test_table_difference_is_the_largest_relative_gap_of_any_range_end(bench_gpu, tmp_path):
    a = _table(tmp_path / "a.json", {"x": (-2.0, 4.0), "y": (0.0, 10.0)})
    b = _table(tmp_path / "b.json", {"x": (-2.0, 4.2), "y": (0.0, 9.0)})
    # x.hi: 0.2 / 4.2; y.hi: 1 / 10 (the larger); lows equal
    assert bench_gpu.table_difference(a, b) == pytest.approx(0.1)
    assert bench_gpu.table_difference(a, tmp_path / "missing.json") is None


def test_sections_show_best_times_and_the_cpu_over_cuda_ratio(bench_gpu):
    run = lambda wall, cpu: {"wall": wall, "cpu": cpu, "load": [0.1, 0.1]}  # noqa: E731
    data = {"train": 32, "val": 64, "runs": {"eval/cpu": [run(12.0, 20.0), run(10.0, 21.0)],
                                             "eval/cuda": [run(4.0, 3.0), run(5.0, 2.5)]},
            "breakdown": {"cuda": {"total": 10.0, "parts": {"session": 1.0, "first_run": 2.0, "runs": 3.0,
                                                            "observers": 3.5, "rest": 0.5}}},
            "agreement": {"pixels_same": 0.99995, "max_logit_diff": 1e-4, "images": 16}}
    whole, parts, checks = bench_gpu.sections(data, ["cpu", "cuda"])
    assert whole["rows"] == [["`eval FLOAT`", 64, "10.00 s (20.0 s CPU)", "4.00 s (2.5 s CPU)", "**2.50x**"]]
    assert parts["rows"] == [["cuda", "10.00 s", "1.00 s (10 %)", "2.00 s (20 %)", "3.00 s (30 %)",
                              "3.50 s (35 %)", "0.50 s (5 %)"]]
    assert checks["rows"][0][1] == "99.9950 %"
