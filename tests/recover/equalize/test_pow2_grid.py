"""Power-of-two grid arithmetic (fcnquant.recover.equalize.pow2_grid): waste and the best alignment against brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.recover.equalize.pow2_grid import best_alignment, waste


def test_waste_is_the_unused_part_of_the_pow2_grid():
    assert waste(127.0) == 0.0 and waste(127 * 0.25) == 0.0
    assert waste(127 * 0.75) == pytest.approx(1 - math.log2(1.5))  # scale 1 for a range that needs 0.75
    # brute force: the grid step 2^e must be the smallest power of two with 127 * 2^e >= T
    for t in np.random.default_rng(0).uniform(0.01, 50, size=200):
        e = min(k for k in range(-20, 20) if 127 * 2.0 ** k >= t)
        assert waste(t) == pytest.approx(e - math.log2(t / 127), abs=1e-12)
    with pytest.raises(ValueError):
        waste(0.0)


def test_best_alignment_beats_a_brute_force_grid_of_factors():
    rng = np.random.default_rng(1)
    for _ in range(30):
        ts = rng.uniform(0.1, 20, size=rng.integers(1, 4))
        a, before, after = best_alignment(ts, margin=0.9999)  # margin 1 would sit exactly on an edge (rounding)
        assert before == pytest.approx(sum(waste(t) for t in ts))
        assert after == pytest.approx(sum(waste(t / a) for t in ts))
        grid = np.exp(np.linspace(math.log(0.5), math.log(2.0), 4001))
        brute = min(sum(waste(t / g) for t in ts) for g in grid)
        assert after <= brute + len(ts) * -math.log2(0.9999) + 1e-9
    a, before, after = best_alignment([127 * 0.75])  # one tensor: lands margin below an edge
    assert after == pytest.approx(-math.log2(0.995)) and before > after
