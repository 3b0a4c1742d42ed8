"""Coordinate descent over discrete choices (fcnquant.recover.scale_search.exponent_search) against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fcnquant.recover.scale_search.exponent_search import coordinate_descent


@pytest.mark.parametrize("seed", range(5))
def test_separable_error_reaches_the_brute_force_optimum_in_one_sweep(seed):
    rng = np.random.default_rng(seed)
    sizes = [2, 3, 2, 4, 2]
    costs = [rng.uniform(0, 1, n) for n in sizes]

    def error(choice):
        return float(sum(c[i] for c, i in zip(costs, choice))) + 1.0

    initial = [int(rng.integers(n)) for n in sizes]
    res = coordinate_descent(error, sizes, initial, sweeps=1, tol=0.0)
    brute = min(itertools.product(*[range(n) for n in sizes]), key=error)
    assert res.choice == tuple(brute)
    assert res.error_after == pytest.approx(error(brute), rel=0, abs=0)
    assert res.error_before == error(initial)
    assert res.evaluations == 1 + sum(n - 1 for n in sizes)


@pytest.mark.parametrize("seed", range(5))
def test_interacting_error_ends_at_a_local_optimum_never_worse(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = [2] * 6
    lookup = {c: float(rng.uniform(1, 2)) for c in itertools.product(*[range(n) for n in sizes])}
    initial = (0,) * 6
    res = coordinate_descent(lambda c: lookup[tuple(c)], sizes, initial, sweeps=10, tol=0.0)
    assert res.error_after == lookup[res.choice] <= lookup[initial]
    for g in range(6):  # brute force over every single-group move: none improves
        moved = list(res.choice)
        moved[g] = 1 - moved[g]
        assert lookup[tuple(moved)] >= res.error_after
    errors = [lookup[initial]] + [s.error for s in res.steps]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)


def test_tolerance_keeps_the_current_choice_for_a_tiny_gain():
    res = coordinate_descent(lambda c: 1.0 - 1e-6 * c[0], [2], [0], tol=1e-3)
    assert res.choice == (0,) and not res.steps
    with pytest.raises(ValueError):
        coordinate_descent(lambda c: 0.0, [2], [2])
