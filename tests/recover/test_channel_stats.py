"""Per-channel statistics (fcnquant.recover.channel_stats) against numpy, and their exact merge."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.recover.channel_stats import ChannelStats


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
