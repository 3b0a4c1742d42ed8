"""What both observers share: exact shard merges, non-finite values refused or skipped, state round trips."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.errors import CalibrationError
from fcnquant.observers import HistogramObserver, MinMaxObserver, NonFiniteError
from tests.observers.helpers import bit_pattern_counts, wide_values


def test_shard_merge_equals_single_pass_bit_for_bit():
    x = wide_values(2)
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
    np.testing.assert_array_equal(h.counts, bit_pattern_counts(finite, 10))
    assert h.nonfinite == 3 and mm.nonfinite == 3
    assert (mm.min, mm.max, mm.count) == (-4.0, 2.0, 3)
    mm.update(np.array([np.nan], np.float32))  # nothing finite: range untouched
    assert (mm.min, mm.max, mm.count, mm.nonfinite) == (-4.0, 2.0, 3, 4)


def test_state_round_trip_and_rejections():
    x = wide_values(6)
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
