"""The distance the sensitivity ranking scores a candidate by (fcnquant.tune.ranking), worked by hand."""
from __future__ import annotations

import numpy as np

from fcnquant.tune.ranking import prediction_distance


def test_prediction_distance_by_hand():
    ref = [np.array([[[[2.0, 0.0]], [[1.0, 3.0]]]])]  # (1, 2, 1, 2): classes 0 and 1
    out = [np.array([[[[2.0, 4.0]], [[1.0, 3.0]]]])]  # second pixel flips to class 0; error 4 at one value
    assert prediction_distance(ref, out) == (1, 16.0)
