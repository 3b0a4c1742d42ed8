"""HistogramObserver: exact bit-pattern bins, order invariance, bin edges, re-binning to a linear histogram."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.errors import CalibrationError
from fcnquant.observers import HistogramObserver, bin_lower_edges
from tests.observers.helpers import bit_pattern_counts, wide_values


@pytest.mark.parametrize("m", [0, 3, 10])
def test_histogram_counts_are_the_bit_pattern_bins(m):
    x = wide_values()
    h = HistogramObserver(m)
    h.update(x.reshape(10, -1))
    np.testing.assert_array_equal(h.counts, bit_pattern_counts(x, m))
    assert h.total == x.size


def test_histogram_spans_chunks_exactly():
    x = wide_values(1, n=3 * 65536 + 17)  # several inner chunks plus a ragged end
    h = HistogramObserver()
    h.update(x)
    np.testing.assert_array_equal(h.counts, bit_pattern_counts(x, 10))


def test_permutation_and_batch_size_invariance():
    x = wide_values(3)
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
    x = np.abs(wide_values(4))
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
