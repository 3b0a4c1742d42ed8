"""The rounding optimiser of one layer (fcnquant.recover.adaround.layer_rounding) against brute force over every rounding."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fcnquant.recover.adaround.layer_rounding import optimize_rounding, quadratic_loss


def brute_force_best(w, s, a, b, c):
    """Every floor/ceil choice of every weight of one channel: the lowest quadratic loss."""
    floor = np.floor(w / s)
    best = math.inf
    for bits in itertools.product((0.0, 1.0), repeat=w.size):
        wq = s * (floor + np.array(bits).reshape(w.shape))
        best = min(best, quadratic_loss(wq, a, b, c))
    return best


def planted_layer(seed: int = 0, d: int = 10):
    """A channel whose inputs are nearly equal (one common factor): the output depends on the sum of the weights,
    so rounding every weight to nearest adds up the errors, while rounding some up and some down cancels them."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((4000, 1))
    x = z + 0.05 * rng.standard_normal((4000, d))  # patches [P, D]
    s = 0.01
    w = (np.arange(d) % 3 + rng.uniform(0.3, 0.45, d)) * s  # fractions 0.30-0.45: nearest always rounds down
    a = (x.T @ x / len(x))[None]
    rows = w.reshape(1, 1, d)
    b = np.matmul(rows, a)
    c = float(np.sum(np.matmul(rows, a) * rows))
    return rows, np.full((1, 1, 1), s), a, b, c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaround_reaches_the_brute_force_optimum(seed):
    w, s, a, b, c = planted_layer(seed)
    best = brute_force_best(w, s, a, b, c)
    res = optimize_rounding(w, s, a, b, c, iterations=1000)
    nearest = quadratic_loss(s * np.rint(w / s), a, b, c)
    assert nearest > 5 * best  # planted: nearest is far from the best rounding
    assert res.loss_nearest == pytest.approx(nearest, rel=1e-9)
    assert res.loss_adaround == pytest.approx(quadratic_loss(s * res.w_int, a, b, c), rel=1e-6, abs=1e-15)
    assert res.loss_adaround <= best * 1.05 + 1e-12
    assert not res.kept_nearest and res.changed > 0
    assert set(np.unique(res.w_int - np.floor(w / s))) <= {0.0, 1.0}  # only floor or ceil


def test_zero_iterations_is_nearest_and_extremes_stay():
    w, s, a, b, c = planted_layer(0)
    res = optimize_rounding(w, s, a, b, c, iterations=0)
    np.testing.assert_array_equal(res.w_int, np.rint(w / s))
    # a weight at the channel's max |w| (|w / s| = 127 exactly) keeps its integer whatever the loss prefers
    w2 = w.copy()
    w2[0, 0, 0] = -127 * s[0, 0, 0]
    b2 = np.matmul(w2, a)
    res = optimize_rounding(w2, s, a, b2, float(np.sum(b2 * w2)), iterations=300)
    assert res.w_int[0, 0, 0] == -127
