"""MinMaxObserver: exact extremes of float32 values and a canonical signed zero."""
from __future__ import annotations

import numpy as np

from fcnquant.observers import MinMaxObserver
from tests.observers.helpers import wide_values


def test_minmax_equals_numpy_exactly():
    x = wide_values(5)
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
