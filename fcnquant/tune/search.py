"""The search over which layers stay in float: pure logic over an oracle, no onnx, no numpy.

Given the quantized layers ranked worst first and an oracle ``drop(float_set) -> float`` (one evaluation of the
tuning set per call), :func:`search` returns the float set it chose and every evaluation it made:

1. ``drop(∅)`` (everything int8). Within ``max_drop``: done, one evaluation.
2. The shortest prefix of the ranking that meets the budget, by *galloping then bisection*: prefixes of 1, 2, 4,
   8, ... layers until one meets it, then bisection between the last prefix that failed and the first that met.
   The full ranking (every layer float) is assumed to meet the budget and is only evaluated when the search ends
   there. Galloping finds a prefix of k layers in about 2 log2(k) + 1 evaluations, so the common case of a good
   ranking (k of 1 to 3) costs 1 to 4; plain bisection would always cost ceil(log2 L).
3. Pruning: every layer of that prefix except its last (returning the last one gives the prefix before it, which
   failed) is returned to int8 in turn, lowest ranked first; it stays int8 when the budget still holds.

The drop measured on a finite tuning set is noisy, so it need not be monotone in the prefix length; the search
then finds *a* boundary (a prefix that meets the budget whose predecessor does not), which is all step 3 needs.
With ``max_evaluations`` (tune passes ceil(log2 L) + 3) the search plans within that many evaluations: it
gallops only while a failed gallop would still leave room for plain bisection of the rest (and its confirmation),
bisects otherwise, and prunes only with the evaluations left, so it never needs more (plain bisection over L
layers takes ceil(log2 L), everything int8 and the confirmation one each). Pruning, unbounded, would cost one
evaluation per layer of the prefix: that is where a long prefix used to overrun the bound. Should the oracle
still run out, the best set found so far is returned, marked ``complete=False``. ``full_drop``: the drop of the
whole ranking in float when the caller measured it already (it is then never evaluated again). When no evaluated set meets the budget, the result is the evaluated set
with the lowest drop (fewest layers on ties), with ``met=False``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the tuning set: which layers were float, the mIoU drop, how long it took and why."""

    index: int  # 1-based
    float_layers: tuple[str, ...]  # in ranking order
    drop: float
    seconds: float
    step: str  # "all-int8", "gallop", "bisect", "prune" or "confirm"
    meets: bool

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"index": self.index, "float_layers": list(self.float_layers), "drop": self.drop,
                "seconds": round(self.seconds, 3), "step": self.step, "meets": self.meets}


@dataclass(frozen=True)
class SearchOutcome:
    """What :func:`search` chose: the float set, its drop, whether it meets the budget, and every evaluation."""

    float_layers: tuple[str, ...]  # in ranking order
    drop: float
    met: bool
    complete: bool  # False when max_evaluations stopped the search early
    evaluations: tuple[Evaluation, ...]
    prefix: int  # length of the ranking prefix found by step 2 (0 when everything int8 met the budget)
    gains: dict[str, float]  # float layer -> drop(set without it) - drop(set), measured (see module docstring)


class _Budget(Exception):
    """Raised inside the search when ``max_evaluations`` are spent."""


def search(
    ranking: Sequence[str] | Callable[[], Sequence[str]],
    drop: Callable[[frozenset[str]], float],
    max_drop: float,
    *,
    max_evaluations: int | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    full_drop: float | None = None,
) -> SearchOutcome:
    """Returns the SearchOutcome of meeting ``max_drop`` with the fewest float layers (rules in the module docstring).

    ``ranking``: layer names, worst (most worth keeping float) first, or a callable returning them, called only
    when everything int8 misses the budget (so a budget met at once costs no ranking). ``drop(float_set)``: the
    tuning-set mIoU drop with the layers of ``float_set`` in float and the rest int8. ``on_evaluation`` is called after each evaluation.
    """
    ranking_arg = ranking
    rank: dict[str, int] = {}
    evals: list[Evaluation] = []
    seen: dict[frozenset[str], float] = {}

    def measure(layers, step: str) -> float:
        key = frozenset(layers)
        if key in seen:
            return seen[key]
        if max_evaluations is not None and len(evals) >= max_evaluations:
            raise _Budget
        start = time.perf_counter()
        value = float(drop(key))
        ev = Evaluation(len(evals) + 1, tuple(sorted(key, key=rank.__getitem__)), value,
                        time.perf_counter() - start, step, value <= max_drop)
        evals.append(ev)
        seen[key] = value
        if on_evaluation is not None:
            on_evaluation(ev)
        return value

    def meets(k: int, step: str) -> bool:
        return measure(ranking[:k], step) <= max_drop

    def room_to_gallop(k: int, n: int) -> bool:
        """True when a failed gallop at k still leaves bisection of (k, n] and its confirmation in the budget."""
        return max_evaluations is None or \
            len(evals) + 1 + _bisection_cost(n - k) + (full_drop is None) <= max_evaluations

    chosen: list[str] = []
    prefix = 0
    complete = True
    ranking = []
    try:
        if not meets(0, "all-int8"):
            ranking = list(dict.fromkeys(ranking_arg() if callable(ranking_arg) else ranking_arg))
            rank.update({name: k for k, name in enumerate(ranking)})
            if full_drop is not None and ranking:
                seen[frozenset(ranking)] = float(full_drop)
        if ranking:
            n = len(ranking)
            lo, hi = 0, None  # lo: longest prefix known to fail; hi: shortest known to meet
            k = 1
            while hi is None:
                if k >= n or not room_to_gallop(k, n):
                    hi = n  # assumed (every layer float); confirmed below when the search ends there
                    break
                if meets(k, "gallop"):
                    hi = k
                else:
                    lo, k = k, 2 * k
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if meets(mid, "bisect"):
                    hi = mid
                else:
                    lo = mid
            if hi == n and not meets(n, "confirm"):
                prefix = n
            else:
                prefix = hi
                chosen = ranking[:hi]
                for name in reversed(ranking[:hi - 1]):  # lowest ranked first; the last one is known needed
                    if max_evaluations is not None and len(evals) >= max_evaluations:
                        break  # the rest of the prefix stays in the fallback
                    trial = [c for c in chosen if c != name]
                    if measure(trial, "prune") <= max_drop:
                        chosen = trial
    except _Budget:
        complete = False

    met_sets = [(len(s), d, s) for s, d in seen.items() if d <= max_drop]
    if chosen and frozenset(chosen) in seen and seen[frozenset(chosen)] <= max_drop:
        best = frozenset(chosen)
    elif met_sets:
        best = min(met_sets, key=lambda t: (t[0], t[1]))[2]
    else:
        best = min(seen, key=lambda s: (seen[s], len(s)))
    gains = _gains(best, seen)
    return SearchOutcome(
        float_layers=tuple(sorted(best, key=rank.__getitem__)), drop=seen[best], met=seen[best] <= max_drop,
        complete=complete, evaluations=tuple(evals), prefix=prefix, gains=gains,
    )


def _bisection_cost(width: int) -> int:
    """Returns the evaluations plain bisection needs to find a boundary among ``width`` prefix lengths."""
    return math.ceil(math.log2(width)) if width > 1 else 0


def _gains(best: frozenset[str], seen: dict[frozenset[str], float]) -> dict[str, float]:
    """Returns {layer of ``best``: drop(best minus it) - drop(best)} where that set was evaluated.

    Where it was not (the set changed by a later pruning step), the gain is taken from the evaluated pair of sets
    that differ by that layer alone and are closest to ``best`` in size.
    """
    out: dict[str, float] = {}
    for name in best:
        without = best - {name}
        if without in seen:
            out[name] = seen[without] - seen[best]
            continue
        pairs = [(abs(len(s) - len(best)), seen[s - {name}] - seen[s]) for s in seen
                 if name in s and (s - {name}) in seen]
        if pairs:
            out[name] = min(pairs)[1]
    return out


def greedy(
    layers: Sequence[str],
    drop: Callable[[frozenset[str]], float],
    max_drop: float,
    max_steps: int | None = None,
) -> tuple[tuple[str, ...], float, int]:
    """Returns (float layers in the order chosen, final drop, evaluations) of the greedy one-at-a-time search.

    Starting from everything int8, repeatedly moves to float the single layer whose move lowers the drop most,
    until the budget is met, every layer is float, or ``max_steps`` layers were moved. The reference the
    benchmarks compare :func:`search` with (``max_steps = k - 1`` tells whether greedy needs fewer than k).
    """
    chosen: list[str] = []
    evaluations = 1
    current = float(drop(frozenset()))
    remaining = list(layers)
    while current > max_drop and remaining and (max_steps is None or len(chosen) < max_steps):
        trials = []
        for name in remaining:
            trials.append((float(drop(frozenset(chosen + [name]))), name))
            evaluations += 1
        current, best = min(trials)
        chosen.append(best)
        remaining.remove(best)
    return tuple(chosen), current, evaluations
