"""Per-channel statistics (fcnquant.recover.equalize.channel_stats) against numpy, and their exact merge."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.recover.equalize.channel_stats import ChannelStats


def test_channel_stats_match_numpy_and_merge_exactly():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    b = rng.normal(size=(1, 3, 4, 5)).astype(np.float32) + 2
    s1, s2 = ChannelStats.empty(3), ChannelStats.empty(3)
    s1.update(a)
    s2.update(b)
    both = np.concatenate([a, b]).astype(np.float64)
    m = s1.merge(s2)
    np.testing.assert_array_equal(m.minimum, both.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(m.maximum, both.max(axis=(0, 2, 3)))
    np.testing.assert_allclose(m.mean(), both.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(m.std(), both.std(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(m.lower_bound("3sigma"), both.mean(axis=(0, 2, 3)) - 3 * both.std(axis=(0, 2, 3)),
                               rtol=1e-9)
    with pytest.raises(ValueError):
        s1.update(np.full((1, 3, 1, 1), np.nan))
    with pytest.raises(ValueError):
        s1.update(np.zeros((1, 2, 1, 1)))


def test_recorded_channel_stats_merge_bit_for_bit():
    """The statistics of shards after the first record their batch sums: merged in shard order they equal, bit
    for bit, the statistics of one pass over every batch (including a recording first operand)."""
    rng = np.random.default_rng(11)
    batches = [(rng.normal(size=(1, 3, 4, 5)) * 10 ** rng.uniform(-6, 6, (1, 3, 1, 1))).astype(np.float32)
               for _ in range(7)]
    whole = ChannelStats.empty(3)
    for x in batches:
        whole.update(x)
    parts = [ChannelStats.empty(3, record=k > 0) for k in range(3)]
    for k, x in enumerate(batches):
        parts[min(k // 3, 2)].update(x)
    merged = parts[0].merge(parts[1].merge(parts[2]))  # a recording left operand keeps recording
    merged_in_order = parts[0].merge(parts[1]).merge(parts[2])
    for m in (merged, merged_in_order):
        assert m.count == whole.count
        for got, want in ((m.total, whole.total), (m.total_sq, whole.total_sq), (m.minimum, whole.minimum),
                          (m.maximum, whole.maximum)):
            assert got.tobytes() == want.tobytes()
