"""Coordinate descent over discrete per-group choices, judged by one error function (numpy only).

The power-of-two scale of an activation is one of two neighbours (``fcnquant.calibrate.pow2``); choosing each by
the tensor's *own* expected error ignores what the next layers and the output make of it (a clipped tail that a
residual stream carries to the logits costs more than the same squared error on an inner ReLU). Judged by the
model's output instead, the choices interact, so they are searched one at a time:

1. start from ``initial`` (one candidate index per group) and its error ``E0 = error(choice)``;
2. for each group in order, evaluate every other candidate of that group with the others fixed, and keep the
   best one if it lowers the current error by more than ``tol`` (relative); ties keep the current choice;
3. repeat the sweep until a sweep changes nothing or ``sweeps`` sweeps have run.

The error never increases (every accepted move lowers it), and on an error that is a sum of independent per-group
terms one sweep reaches the exact optimum (each group's best candidate), which the tests check by brute force.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class SearchStep:
    """One accepted move: the group, its old and new candidate index, and the error after the move."""

    group: int
    old: int
    new: int
    error: float


@dataclass(frozen=True)
class SearchResult:
    """The chosen candidate index per group, the error before and after, the moves and the evaluations spent."""

    choice: tuple[int, ...]
    error_before: float
    error_after: float
    steps: tuple[SearchStep, ...]
    evaluations: int
    sweeps: int


def coordinate_descent(
    error: Callable[[Sequence[int]], float],
    candidates: Sequence[int],
    initial: Sequence[int],
    *,
    sweeps: int = 2,
    tol: float = 1e-3,
) -> SearchResult:
    """Returns the SearchResult of minimising ``error(choice)`` one group at a time.

    ``candidates[g]`` is the number of choices of group ``g`` (indices ``0 .. candidates[g] - 1``); ``initial`` the
    starting index per group. A move is accepted when it lowers the current error below ``(1 - tol)`` times it.
    """
    if len(candidates) != len(initial):
        raise ValueError(f"{len(candidates)} groups but {len(initial)} initial choices")
    if any(not 0 <= i < n for i, n in zip(initial, candidates)):
        raise ValueError("an initial choice is outside its group's candidates")
    if sweeps < 1 or not 0 <= tol < 1:
        raise ValueError(f"need sweeps >= 1 and 0 <= tol < 1, got {sweeps}, {tol}")
    choice = list(initial)
    best = float(error(choice))
    before, evaluations, steps, done = best, 1, [], 0
    for _ in range(sweeps):
        done += 1
        changed = False
        for g, n in enumerate(candidates):
            current = choice[g]
            pick, pick_err = current, best
            for c in range(n):
                if c == current:
                    continue
                choice[g] = c
                e = float(error(choice))
                evaluations += 1
                if e < pick_err:
                    pick, pick_err = c, e
            if pick != current and pick_err < best * (1.0 - tol):
                choice[g] = pick
                best = pick_err
                steps.append(SearchStep(g, current, pick, best))
                changed = True
            else:
                choice[g] = current
        if not changed:
            break
    return SearchResult(tuple(choice), before, best, tuple(steps), evaluations, done)
