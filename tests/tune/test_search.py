"""fcnquant.tune.search on synthetic oracles, against brute force over every subset."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fcnquant.tune.search import greedy, search


def _additive(gains: dict[str, float], base: float):
    """drop(S) = base - sum of the gains of S: monotone (more float layers never hurt)."""
    calls = []

    def drop(s: frozenset[str]) -> float:
        calls.append(s)
        return base - sum(gains[n] for n in s)
    return drop, calls


def _brute_force_min(names, drop, max_drop) -> int:
    """Returns the size of the smallest subset meeting max_drop (len(names) + 1 when none does)."""
    for k in range(len(names) + 1):
        if any(drop(frozenset(c)) <= max_drop for c in itertools.combinations(names, k)):
            return k
    return len(names) + 1


def test_budget_met_at_once_costs_one_evaluation_and_no_ranking():
    drop, calls = _additive({"a": 1.0}, base=0.2)
    ranked = []

    def ranking():
        ranked.append(1)
        return ["a"]
    out = search(ranking, drop, 0.5)
    assert out.float_layers == () and out.met and len(out.evaluations) == 1 and not ranked
    assert calls == [frozenset()]


@pytest.mark.parametrize("seed", range(40))
def test_additive_oracle_matches_brute_force_when_ranked_by_gain(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    names = [f"l{i}" for i in range(n)]
    gains = {nm: float(g) for nm, g in zip(names, rng.exponential(1.0, n))}
    base = sum(gains.values()) * float(rng.uniform(0.3, 1.0))
    max_drop = float(rng.uniform(0.0, 0.5)) * base
    drop, _ = _additive(gains, base)
    ranking = sorted(names, key=lambda nm: -gains[nm])
    out = search(ranking, drop, max_drop)
    best = _brute_force_min(names, drop, max_drop)
    assert best <= n  # every layer float gives base - sum <= 0 <= max_drop
    # with an additive oracle and the ranking by gain, the best k-set is the top-k prefix: the search is optimal
    assert len(out.float_layers) == best
    assert out.met and drop(frozenset(out.float_layers)) <= max_drop
    # the shortest prefix: its predecessor fails
    assert out.prefix == 0 or drop(frozenset(ranking[:out.prefix - 1])) > max_drop
    # every evaluation is a distinct set and none of them is repeated
    sets = [frozenset(e.float_layers) for e in out.evaluations]
    assert len(sets) == len(set(sets))
    # galloping + bisection + pruning: at most 2*ceil(log2 k)+1 probes after the first, plus k-1 pruning steps
    k = out.prefix
    if k:
        assert len(out.evaluations) <= 1 + 2 * math.ceil(math.log2(k)) + 1 + (k - 1)


@pytest.mark.parametrize("seed", range(30))
def test_pruning_removes_every_layer_that_is_not_needed(seed):
    """A poor ranking (random order): the result is minimal — no single layer can go back to int8."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 9))
    names = [f"l{i}" for i in range(n)]
    gains = {nm: float(g) for nm, g in zip(names, rng.exponential(1.0, n))}
    base = sum(gains.values()) * 0.9
    max_drop = float(rng.uniform(0.05, 0.6)) * base
    drop, _ = _additive(gains, base)
    ranking = list(rng.permutation(names))
    out = search(ranking, drop, max_drop)
    chosen = frozenset(out.float_layers)
    assert drop(chosen) <= max_drop
    for nm in chosen:
        assert drop(chosen - {nm}) > max_drop
    # measured gains are exact differences of the oracle
    for nm, g in out.gains.items():
        assert g == pytest.approx(gains[nm])
    assert len(chosen) >= _brute_force_min(names, drop, max_drop)


def test_impossible_budget_returns_the_best_evaluated_set():
    drop, _ = _additive({"a": 0.3, "b": 0.2}, base=1.0)
    out = search(["a", "b"], drop, max_drop=0.1)
    assert not out.met
    assert out.float_layers == ("a", "b") and out.drop == pytest.approx(0.5)
    assert [e.step for e in out.evaluations][-1] == "confirm"


def test_max_evaluations_stops_early():
    drop, _ = _additive({f"l{i}": 1.0 for i in range(8)}, base=8.0)
    out = search([f"l{i}" for i in range(8)], drop, 2.5, max_evaluations=3)
    assert len(out.evaluations) == 3 and not out.complete


def test_greedy_against_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(1, 7))
        names = [f"l{i}" for i in range(n)]
        gains = {nm: float(g) for nm, g in zip(names, rng.exponential(1.0, n))}
        base = sum(gains.values())
        max_drop = float(rng.uniform(0.0, 0.8)) * base
        drop, _ = _additive(gains, base)
        chosen, final, evals = greedy(names, drop, max_drop)
        assert final <= max_drop + 1e-12
        assert len(chosen) == _brute_force_min(names, drop, max_drop)  # greedy is optimal for additive gains


def _bound(n: int) -> int:
    return math.ceil(math.log2(n)) + 3


@pytest.mark.parametrize("n", [2, 3, 19, 76])
def test_the_evaluation_bound_is_honoured_for_every_prefix_length(n):
    """Counted by a stub oracle: whatever prefix the budget needs (1 .. n layers), the search makes at most
    ceil(log2 n) + 3 evaluations and returns a set that meets the budget."""
    names = [f"l{i}" for i in range(n)]
    for k in range(1, n + 1):
        gains = {name: (1.0 if i < k else 0.001) for i, name in enumerate(names)}
        drop, calls = _additive(gains, base=float(k))  # exactly the first k layers are needed
        out = search(names, drop, 1e-9, max_evaluations=_bound(n))
        assert len(calls) == len(out.evaluations) <= _bound(n), (n, k)
        assert out.met and set(names[:k]) <= set(out.float_layers), (n, k)


def test_without_the_bound_pruning_a_long_prefix_overruns_it():
    """The cause of the overrun: one pruning evaluation per layer of the prefix found."""
    names = [f"l{i}" for i in range(76)]
    gains = {name: (1.0 if i < 30 else 0.0) for i, name in enumerate(names)}
    drop, calls = _additive(gains, base=30.0)
    out = search(names, drop, 0.0)
    assert out.met and len(calls) > _bound(76) and sum(e.step == "prune" for e in out.evaluations) == 29


def test_a_known_full_drop_is_never_evaluated():
    names = [f"l{i}" for i in range(8)]
    drop, calls = _additive({n: 1.0 for n in names}, base=8.0)
    out = search(names, drop, 0.0, max_evaluations=_bound(8) - 1, full_drop=0.0)
    assert frozenset(names) not in calls and out.met and set(out.float_layers) == set(names)
    assert len(calls) <= _bound(8) - 1
