"""The compiled drift sums against the numpy DriftAccumulator (the reference) and an independent float64 sum."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.compare.drift import metrics as drift
from fcnquant.compare.drift.kernel import drift_sums, drift_sums_codes

needs_kernel = pytest.mark.skipif(drift_sums is None, reason="fcnquant._native not built, or disabled")


def _pair(seed: int = 0, n: int = 100_001):
    rng = np.random.default_rng(seed)
    r = (rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))).astype(np.float32)
    t = (r + rng.standard_normal(n).astype(np.float32) * np.float32(0.01) * np.abs(r)).astype(np.float32)
    return r, t


def _numpy(r, t, monkeypatch) -> drift.DriftMetrics:
    with monkeypatch.context() as m:
        m.setattr(drift, "_KERNEL", None)
        acc = drift.DriftAccumulator()
        acc.update(r, t)
        return acc.result()


@needs_kernel
def test_sums_equal_an_independent_float64_computation():
    r, t = _pair()
    r64, t64 = r.astype(np.float64), t.astype(np.float64)
    e = t64 - r64
    got = drift_sums(r, t)
    want = (math.fsum(e * e), math.fsum(r64 * r64), math.fsum(t64 * t64), math.fsum(r64 * t64), float(np.abs(e).max()))
    for g, w in zip(got[:4], want[:4]):
        assert g == pytest.approx(w, rel=1e-12)
    assert got[4] == want[4]  # the max is exact


@needs_kernel
def test_accumulator_with_kernel_equals_numpy_reference(monkeypatch):
    r, t = _pair(1)
    ref = _numpy(r, t, monkeypatch)
    acc = drift.DriftAccumulator()
    for s in range(0, r.size, 30_000):  # batches, as over images
        acc.update(r[s:s + 30_000], t[s:s + 30_000])
    got = acc.result()
    assert got.count == ref.count and got.nonfinite == 0 and got.max_abs == ref.max_abs
    for key in ("cosine", "snr_db", "mse", "rel_l2"):
        assert getattr(got, key) == pytest.approx(getattr(ref, key), rel=1e-12, abs=1e-14)


@needs_kernel
def test_nonfinite_pairs_fall_back_to_numpy_and_are_counted(monkeypatch):
    r, t = _pair(2)
    t[[3, 500]] = [np.nan, np.inf]
    r[700] = -np.inf
    acc = drift.DriftAccumulator()
    acc.update(r, t)
    got, ref = acc.result(), _numpy(r, t, monkeypatch)
    assert got.nonfinite == ref.nonfinite == 3 and got.count == ref.count == r.size - 3
    assert got.snr_db == ref.snr_db and got.max_abs == ref.max_abs


def test_identical_and_float16_inputs_use_the_reference_rules(monkeypatch):
    r, _ = _pair(3, 1000)
    same = drift.DriftAccumulator()
    same.update(r, r.copy())
    assert same.result().snr_db == math.inf and same.result().max_abs == 0.0
    h = r.astype(np.float16)  # not float32: always the numpy path
    acc = drift.DriftAccumulator()
    acc.update(r, h)
    assert acc.result() == _numpy(r, h, monkeypatch)


@needs_kernel
@pytest.mark.parametrize("dtype,zero_point", [("int8", -3), ("uint8", 128), ("int16", 7), ("uint16", 32768),
                                              ("int32", 0)])
def test_codes_sums_equal_an_independent_dequantization(dtype, zero_point):
    """The codes kernel against DequantizeLinear's arithmetic done here in numpy (float32), then float64 sums."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    n = 50_003
    codes = rng.integers(max(info.min, -40_000), min(info.max, 40_000) + 1, n).astype(dtype)
    scale = np.float32(0.0123)
    q = (codes.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * scale  # float32, as the operator
    r = (q + rng.standard_normal(n).astype(np.float32) * np.float32(0.01)).astype(np.float32)
    r64, q64 = r.astype(np.float64), q.astype(np.float64)
    e = q64 - r64
    got = drift_sums_codes(r, codes, zero_point, float(scale))
    want = (math.fsum(e * e), math.fsum(r64 * r64), math.fsum(q64 * q64), math.fsum(r64 * q64), float(np.abs(e).max()))
    for g, w in zip(got[:4], want[:4]):
        assert g == pytest.approx(w, rel=1e-12)
    assert got[4] == want[4]
    with pytest.raises(ValueError):  # one code short
        drift_sums_codes(r, codes[:-1], zero_point, float(scale))
    with pytest.raises(TypeError):  # float codes are not codes
        drift_sums_codes(r, q, zero_point, float(scale))


@needs_kernel
def test_accumulator_over_codes_equals_the_dequantized_reference(monkeypatch):
    rng = np.random.default_rng(5)
    codes = rng.integers(-128, 128, 30_001).astype(np.int8)
    values = drift.QuantizedValues(codes, np.float32(0.05), 3)
    r = (values.dequantize() + rng.standard_normal(codes.size).astype(np.float32) * np.float32(0.02)).astype(
        np.float32)
    acc = drift.DriftAccumulator()
    acc.update(r, values)
    got, ref = acc.result(), _numpy(r, values.dequantize(), monkeypatch)
    assert got.count == ref.count and got.max_abs == ref.max_abs
    for key in ("cosine", "snr_db", "mse", "rel_l2"):
        assert getattr(got, key) == pytest.approx(getattr(ref, key), rel=1e-12, abs=1e-14)
