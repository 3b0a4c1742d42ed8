"""Drift metrics (fcnquant.compare.drift) against numpy references, streamed and merged in any order."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.compare.drift.metrics import DriftAccumulator, cosine, snr_db


def _reference(ref: np.ndarray, test: np.ndarray) -> dict:
    r = ref.astype(np.float64).ravel()
    t = test.astype(np.float64).ravel()
    e = t - r
    return {
        "cosine": float(np.sum(r * t) / np.sqrt(np.sum(r * r) * np.sum(t * t))),
        "snr_db": float(10 * np.log10(np.sum(r * r) / np.sum(e * e))),
        "mse": float(np.mean(e * e)),
        "max_abs": float(np.max(np.abs(e))),
        "rel_l2": float(np.sqrt(np.sum(e * e) / np.sum(r * r))),
        "count": r.size,
    }


def test_metrics_match_numpy_on_random_tensors():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 40, 37)).astype(np.float32)
    test = (ref + 0.05 * rng.standard_normal(ref.shape)).astype(np.float32)
    acc = DriftAccumulator()
    acc.update(ref, test)
    got = acc.result()
    want = _reference(ref, test)
    assert got.count == want["count"]
    for key in ("cosine", "snr_db", "mse", "max_abs", "rel_l2"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-12), key
    assert got.nonfinite == 0


def test_planted_snr_is_recovered_exactly():
    # noise scaled so that 10 log10(sum r^2 / sum n^2) is exactly 23.5 dB (float64 throughout)
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(200_000) * 3.0 + 0.5
    u = rng.standard_normal(ref.size)
    noise = u * math.sqrt(np.sum(ref**2) / (10 ** (23.5 / 10) * np.sum(u**2)))
    acc = DriftAccumulator()
    acc.update(ref, ref + noise)
    assert acc.result().snr_db == pytest.approx(23.5, abs=1e-9)


def test_constant_offset_gives_closed_form_values():
    ref = np.full((4, 4), 2.0)
    acc = DriftAccumulator()
    acc.update(ref, ref + 0.5)
    m = acc.result()
    assert m.mse == 0.25 and m.max_abs == 0.5
    assert m.rel_l2 == pytest.approx(0.25)
    assert m.snr_db == pytest.approx(10 * math.log10(16.0))  # 2^2 / 0.5^2
    assert m.cosine == pytest.approx(1.0)


def test_streaming_over_batches_equals_one_pass_and_merge():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((6, 3, 50, 50)).astype(np.float32)
    test = (ref * 1.01 + 0.02).astype(np.float16)  # fp16 test tensors are accepted
    whole = DriftAccumulator()
    whole.update(ref, test)
    streamed = DriftAccumulator()
    for k in range(6):
        streamed.update(ref[k:k + 1], test[k:k + 1])
    a, b = DriftAccumulator(), DriftAccumulator()
    a.update(ref[:2], test[:2])
    b.update(ref[2:], test[2:])
    merged = a.merge(b).result()
    want = _reference(ref, test)
    for m in (whole.result(), streamed.result(), merged):
        assert m.count == want["count"]
        for key in ("cosine", "snr_db", "mse", "max_abs", "rel_l2"):
            assert getattr(m, key) == pytest.approx(want[key], rel=1e-10), key


def test_small_error_on_large_values_does_not_cancel():
    # |ref| ~ 1e4 with an error of 1e-3: sum(q^2) - 2 sum(rq) + sum(r^2) would lose every digit in float64
    rng = np.random.default_rng(3)
    ref = (1e4 + rng.standard_normal(300_000)).astype(np.float32)
    err = np.where(rng.random(ref.size) < 0.5, 1e-3, -1e-3).astype(np.float64)
    test = (ref.astype(np.float64) + err).astype(np.float32)
    exact_err = test.astype(np.float64) - ref.astype(np.float64)  # exact: both are float32 values
    acc = DriftAccumulator()
    acc.update(ref, test)
    m = acc.result()
    assert m.mse == pytest.approx(float(np.mean(exact_err**2)), rel=1e-9)
    naive = np.sum(test.astype(np.float64) ** 2) - 2 * np.sum(test.astype(np.float64) * ref) + np.sum(
        ref.astype(np.float64) ** 2)
    assert abs(naive / ref.size - m.mse) > 1e-3 * m.mse  # the cancelling formula would indeed be wrong


def test_nonfinite_pairs_are_counted_and_left_out():
    ref = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    test = np.array([1.5, np.inf, 3.0, np.nan], dtype=np.float32)
    acc = DriftAccumulator()
    acc.update(ref, test)
    m = acc.result()
    assert m.nonfinite == 2 and m.count == 2
    want = _reference(ref[[0, 2]], test[[0, 2]])
    assert m.snr_db == pytest.approx(want["snr_db"]) and m.max_abs == 0.5


def test_edge_cases():
    same = DriftAccumulator()
    same.update(np.ones(5), np.ones(5))
    assert same.result().snr_db == math.inf and same.result().rel_l2 == 0.0 and same.result().cosine == 1.0
    assert snr_db(0.0, 1.0) == -math.inf and math.isnan(snr_db(0.0, 0.0))
    assert cosine(0.0, 0.0, 0.0) == 1.0 and cosine(0.0, 1.0, 0.0) == 0.0
    empty = DriftAccumulator().result()
    assert empty.count == 0 and math.isnan(empty.snr_db) and math.isnan(empty.mse)
    with pytest.raises(ValueError):
        DriftAccumulator().update(np.zeros((2, 3)), np.zeros((3, 2)))
    d = same.result().to_dict()
    assert d["snr_db"] is None  # +inf is not valid JSON


def test_exact_sums_do_not_depend_on_order_or_grouping():
    from fcnquant.compare.drift.metrics import ExactSum

    rng = np.random.default_rng(11)
    values = (rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 9, 2000)).tolist()
    want = math.fsum(values)  # the correctly rounded sum (independent of ExactSum)
    forward, backward = ExactSum(), ExactSum()
    for v in values:
        forward.add(v)
    for v in reversed(values):
        backward.add(v)
    parts = [ExactSum() for _ in range(3)]
    for i, v in enumerate(values):
        parts[i % 3].add(v)
    grouped = ExactSum()
    for p in reversed(parts):
        grouped.merge(p)
    assert forward.value == backward.value == grouped.value == want
    assert len(forward.partials) < 40


def test_accumulators_merged_in_any_grouping_give_the_same_bits():
    rng = np.random.default_rng(12)
    ref = rng.standard_normal((7, 4, 30, 30)).astype(np.float32)
    test = (ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.05).astype(np.float32)
    one = DriftAccumulator()
    for k in range(7):
        one.update(ref[k], test[k])
    shards = []
    for lo, hi in ((4, 7), (0, 2), (2, 4)):
        a = DriftAccumulator()
        for k in range(lo, hi):
            a.update(ref[k], test[k])
        shards.append(a)
    merged = DriftAccumulator()
    for a in shards:
        merged.merge(a)
    assert merged.result() == one.result()  # bit for bit, not approximately
    # and each sum is the correctly rounded sum of the per-image float64 sums (math.fsum, an independent total)
    per_image = [float(np.sum((test[k].astype(np.float64) - ref[k]) ** 2)) for k in range(7)]
    assert one.sum_err2 == pytest.approx(math.fsum(per_image), rel=1e-12)
