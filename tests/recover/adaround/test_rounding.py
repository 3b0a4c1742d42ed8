"""AdaRound's rounding arithmetic (fcnquant.recover.adaround.rounding) worked by hand and against finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.recover.adaround import rounding as rnd


def test_rectified_sigmoid_hand_values():
    # sigmoid(0) = 1/2 -> 0.5 * 1.2 - 0.1 = 0.5; sigmoid(log 11) = 11/12 -> 1.0; sigmoid(-log 11) = 1/12 -> 0.0
    h = rnd.rectified_sigmoid(np.array([0.0, math.log(11), -math.log(11), 50.0, -50.0]))
    np.testing.assert_allclose(h, [0.5, 1.0, 0.0, 1.0, 0.0], rtol=0, atol=1e-12)
    # sigmoid(log 3) = 3/4 -> 0.75 * 1.2 - 0.1 = 0.8
    assert rnd.rectified_sigmoid(np.array(math.log(3)))[()] == pytest.approx(0.8, abs=1e-12)


def test_initial_v_inverts_h_on_the_fraction():
    frac = np.array([0.0, 0.1, 0.3, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(rnd.rectified_sigmoid(rnd.initial_v(frac)), frac, rtol=0, atol=1e-12)
    # frac 0.5: (0.5 + 0.1) / 1.2 = 0.5 = sigmoid(0)
    assert rnd.initial_v(np.array(0.5))[()] == pytest.approx(0.0, abs=1e-12)


def test_regularizer_hand_values_and_gradient():
    h = np.array([0.5, 0.0, 1.0, 0.75])
    # beta 2: 1 - 0 + 1 - 1 + 1 - 1 + 1 - 0.5^2 = 1.75
    assert rnd.regularizer(h, 2.0) == pytest.approx(1.75, abs=1e-12)
    # d/dh (1 - (2h - 1)^2) = -4 (2h - 1): at h = 0.75 -> -2
    assert rnd.regularizer_grad(np.array([0.75]), 2.0)[0] == pytest.approx(-2.0, abs=1e-12)
    x = np.array([0.2, 0.4, 0.65, 0.9])
    eps = 1e-6
    for beta in (2.0, 7.5, 20.0):
        numeric = [(rnd.regularizer(x + eps * e, beta) - rnd.regularizer(x - eps * e, beta)) / (2 * eps)
                   for e in np.eye(4)]
        np.testing.assert_allclose(rnd.regularizer_grad(x, beta), numeric, rtol=1e-5, atol=1e-8)


def test_sigmoid_gradient_matches_finite_differences():
    v = np.array([-3.0, -0.7, 0.0, 0.4, 2.2])
    eps = 1e-6
    numeric = (rnd.rectified_sigmoid(v + eps) - rnd.rectified_sigmoid(v - eps)) / (2 * eps)
    np.testing.assert_allclose(rnd.rectified_sigmoid_grad(v), numeric, rtol=1e-6, atol=1e-9)
    assert rnd.rectified_sigmoid_grad(np.array([5.0]))[0] == 0.0  # h clipped at 1: no gradient


def test_beta_schedule():
    # 1000 steps, warm start 20%: no regulariser for steps 0..199, then 20 -> 2 along a half cosine
    assert rnd.beta_at(0, 1000) is None and rnd.beta_at(199, 1000) is None
    assert rnd.beta_at(200, 1000) == pytest.approx(20.0)
    assert rnd.beta_at(600, 1000) == pytest.approx(11.0)  # half way: 2 + 18 * (1 + cos(pi/2)) / 2
    assert rnd.beta_at(1000, 1000) == pytest.approx(2.0)


def test_hard_round_and_nearest():
    floor = np.array([3.0, 3.0, -127.0, 126.0, 127.0])
    v = np.array([-0.01, 0.0, -5.0, 5.0, 5.0])  # h < 0.5, h = 0.5, h = 0, h = 1, h = 1 (clipped at 127)
    np.testing.assert_array_equal(rnd.hard_round(floor, v), [3, 4, -127, 127, 127])
    np.testing.assert_array_equal(rnd.nearest_int(np.array([2.5, 3.5, -0.5, 127.4, -130.0])), [2, 4, -0, 127, -127])
