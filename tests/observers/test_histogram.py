"""Observers: exact bit-pattern histogram and min/max, merge/order invariance, non-finite handling, re-binning."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.errors import CalibrationError
from fcnquant.observers import HistogramObserver, MinMaxObserver, NonFiniteError, bin_lower_edges


def _data(seed: int = 0, n: int = 50_000) -> np.ndarray:
    """Signed values over many binades, with +0, -0, subnormals and large values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-12, 12, n))).astype(np.float32)
    x[:50] = 0.0
    x[50:60] = -0.0
    x[60:70] = np.float32(1e-42)  # subnormal
    x[70:75] = np.float32(3e38)
    return rng.permutation(x)


def _ref_counts(x: np.ndarray, m: int) -> np.ndarray:
    """Independent reference: bin = top (9 + m) bits of the float32 pattern, counted with integer division."""
    bits = np.frombuffer(np.asarray(x, np.float32).tobytes(), dtype="<u4").astype(np.int64)
    return np.bincount(bits // 2 ** (23 - m), minlength=2 ** (9 + m))


@pytest.mark.parametrize("m", [0, 3, 10])
def test_histogram_counts_are_the_bit_pattern_bins(m):
    x = _data()
    h = HistogramObserver(m)
    h.update(x.reshape(10, -1))
    np.testing.assert_array_equal(h.counts, _ref_counts(x, m))
    assert h.total == x.size


def test_histogram_spans_chunks_exactly():
    x = _data(1, n=3 * 65536 + 17)  # several inner chunks plus a ragged end
    h = HistogramObserver()
    h.update(x)
    np.testing.assert_array_equal(h.counts, _ref_counts(x, 10))


def test_shard_merge_equals_single_pass_bit_for_bit():
    x = _data(2)
    single_h, single_m = HistogramObserver(), MinMaxObserver()
    single_h.update(x)
    single_m.update(x)
    # shards of unequal sizes, each fed in different batch sizes, merged in a scrambled order
    cuts = [0, 7, 1000, 1001, 23_456, x.size]
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        h, mm = HistogramObserver(), MinMaxObserver()
        for s in range(a, b, 333):
            h.update(x[s:min(s + 333, b)])
            mm.update(x[s:min(s + 333, b)])
        parts.append((h, mm))
    merged_h, merged_m = HistogramObserver(), MinMaxObserver()
    for k in [3, 0, 4, 2, 1]:
        merged_h.merge(parts[k][0])
        merged_m.merge(parts[k][1])
    np.testing.assert_array_equal(merged_h.counts, single_h.counts)
    assert merged_h.counts.dtype == np.int64
    assert (merged_m.min, merged_m.max, merged_m.count) == (single_m.min, single_m.max, single_m.count)


def test_permutation_and_batch_size_invariance():
    x = _data(3)
    a, b = HistogramObserver(), HistogramObserver()
    a.update(x)
    y = np.random.default_rng(9).permutation(x)
    for s in range(0, y.size, 4096):
        b.update(y[s:s + 4096])
    np.testing.assert_array_equal(a.counts, b.counts)


def test_merge_refuses_different_mantissa_bits():
    with pytest.raises(CalibrationError, match="mantissa"):
        HistogramObserver(10).merge(HistogramObserver(8))


@pytest.mark.parametrize("m", [0, 4, 10])
def test_bin_edges_are_exact_and_contain_their_values(m):
    x = np.abs(_data(4))
    x = x[np.isfinite(x)]
    mag = (x.view(np.uint32) >> (23 - m)).astype(np.int64)
    lo, hi = bin_lower_edges(mag, m), bin_lower_edges(mag + 1, m)
    xd = x.astype(np.float64)
    assert (lo <= xd).all() and (xd < hi).all()
    # edges are float32 values (the largest finite bin's upper edge, 2**128, is not)
    finite_hi = hi[hi < 2.0 ** 128]
    np.testing.assert_array_equal(lo.astype(np.float32).astype(np.float64), lo)
    np.testing.assert_array_equal(finite_hi.astype(np.float32).astype(np.float64), finite_hi)
    normal = lo >= 2.0 ** -126
    binade = np.ldexp(1.0, np.frexp(lo[normal])[1] - 1)  # 2**floor(log2(lo))
    np.testing.assert_array_equal((hi - lo)[normal], binade * 2.0 ** -m)


def test_minmax_equals_numpy_exactly():
    x = _data(5)
    mm = MinMaxObserver()
    assert (mm.min, mm.max, mm.count) == (float("inf"), float("-inf"), 0)
    for s in range(0, x.size, 777):
        mm.update(x[s:s + 777])
    assert mm.min == float(np.min(x)) and mm.max == float(np.max(x)) and mm.count == x.size
    # float64 input is observed as float32
    mm64 = MinMaxObserver()
    mm64.update(np.array([0.1, -2.5], dtype=np.float64))
    assert mm64.min == -2.5 and mm64.max == float(np.float32(0.1))


def test_minmax_signed_zero_is_canonical():
    a, b, both = MinMaxObserver(), MinMaxObserver(), MinMaxObserver()
    a.update(np.array([-0.0, 1.0], np.float32))
    b.update(np.array([0.0, 2.0], np.float32))
    both.update(np.array([0.0, -0.0, 2.0, 1.0], np.float32))
    b.merge(a)
    for mm in (a, b, both):
        assert mm.min == 0.0 and not np.signbit(mm.min)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises_and_leaves_state_unchanged(bad):
    x = np.array([1.0, 2.0, bad, 3.0, bad], dtype=np.float32)
    h, mm = HistogramObserver(), MinMaxObserver()
    h.update(np.array([5.0], np.float32))
    mm.update(np.array([5.0], np.float32))
    before = h.counts.copy()
    with pytest.raises(NonFiniteError) as err:
        h.update(x)
    assert err.value.count == 2
    with pytest.raises(NonFiniteError) as err2:
        mm.update(x)
    assert err2.value.count == 2
    assert isinstance(err.value, CalibrationError)
    np.testing.assert_array_equal(h.counts, before)
    assert (mm.min, mm.max, mm.count) == (5.0, 5.0, 1)


def test_nonfinite_skipped_and_counted():
    x = np.array([1.0, np.nan, -4.0, np.inf, -np.inf, 2.0], dtype=np.float32)
    h, mm = HistogramObserver(skip_nonfinite=True), MinMaxObserver(skip_nonfinite=True)
    h.update(x)
    mm.update(x)
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(h.counts, _ref_counts(finite, 10))
    assert h.nonfinite == 3 and mm.nonfinite == 3
    assert (mm.min, mm.max, mm.count) == (-4.0, 2.0, 3)
    mm.update(np.array([np.nan], np.float32))  # nothing finite: range untouched
    assert (mm.min, mm.max, mm.count, mm.nonfinite) == (-4.0, 2.0, 3, 4)


def test_state_round_trip_and_rejections():
    x = _data(6)
    h, mm = HistogramObserver(9), MinMaxObserver()
    h.update(x)
    mm.update(x)
    h2 = HistogramObserver.from_state(h.state())
    np.testing.assert_array_equal(h2.counts, h.counts)
    assert h2.mantissa_bits == 9
    mm2 = MinMaxObserver.from_state(mm.state())
    assert (mm2.min, mm2.max, mm2.count) == (mm.min, mm.max, mm.count)
    st = h.state()
    st["index"] = st["index"][::-1].copy()
    with pytest.raises(CalibrationError, match="increasing"):
        HistogramObserver.from_state(st)
    nan_bin = np.array([np.nan], np.float32).view(np.uint32) >> 14
    bad = {"mantissa_bits": np.array([9]), "index": nan_bin.astype(np.uint32), "count": np.array([1], np.int64),
           "nonfinite": np.array([0])}
    with pytest.raises(CalibrationError, match="NaN"):
        HistogramObserver.from_state(bad)
    with pytest.raises(CalibrationError):
        MinMaxObserver.from_state({"range": np.array([3.0, 1.0]), "count": np.array([5, 0])})


def test_to_linear_hand_example():
    # M = 0: [1, 2) is one bin; four values there are spread uniformly over it
    h = HistogramObserver(0)
    h.update(np.array([1.0, 1.2, 1.7, 1.9], np.float32))
    counts, edges = h.to_linear(4, upper=2.0)
    np.testing.assert_array_equal(edges, [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(counts, [0.0, 0.0, 2.0, 2.0])
    # clipped to the true extremes [1.0, 1.5]: all mass in (1.0, 1.5]
    counts, _ = h.to_linear(4, upper=2.0, vmin=1.0, vmax=1.5)
    np.testing.assert_array_equal(counts, [0.0, 0.0, 4.0, 0.0])
    # mass above `upper` is folded into the last bin
    counts, _ = h.to_linear(2, upper=1.25)
    np.testing.assert_allclose(counts, [0.0, 4.0], rtol=0, atol=0)
    assert h.quantile(0.5) == 1.5


def test_to_linear_matches_raw_histogram_within_one_float_bin():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(100_000) * 3).astype(np.float32)
    m = 6
    h = HistogramObserver(m)
    h.update(x)
    amax = float(np.abs(x).max())
    counts, edges = h.to_linear(64, vmin=float(x.min()), vmax=float(x.max()))
    assert edges[-1] == amax
    assert counts.sum() == pytest.approx(x.size, abs=1e-6)
    model_cdf = np.cumsum(counts)[:-1]
    a = np.abs(x).astype(np.float64)
    for e, f in zip(edges[1:-1], model_cdf):
        raw = np.count_nonzero(a <= e)
        # only values in the bit-pattern bin holding e (either sign) can be placed differently
        same_bin = np.count_nonzero((np.abs(x).view(np.uint32) >> (23 - m)) == (np.float32(e).view(np.uint32)
                                                                                   >> (23 - m)))
        assert abs(f - raw) <= same_bin + 1e-6


def test_signed_to_linear_and_quantile_reference():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(20_000) - 1.0).astype(np.float32)
    h = HistogramObserver(10)
    h.update(x)
    counts, edges = h.to_linear(8, absolute=False, vmin=float(x.min()), vmax=float(x.max()))
    assert edges[0] == float(x.min()) and edges[-1] == float(x.max())
    raw, _ = np.histogram(x.astype(np.float64), bins=edges)
    np.testing.assert_allclose(counts, raw, atol=40)  # values near an edge may move one bit-pattern bin
    a = np.sort(np.abs(x).astype(np.float64))
    for q in (0.5, 0.9, 0.999):
        t = h.quantile(q, vmin=float(x.min()), vmax=float(x.max()))
        ref = a[int(np.ceil(q * a.size)) - 1]
        mag = np.float32(ref).view(np.uint32) >> 13
        width = bin_lower_edges(mag + 1, 10) - bin_lower_edges(mag, 10)
        assert abs(t - ref) <= width
