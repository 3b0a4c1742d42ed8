"""Power-of-two grid arithmetic for alignment: how much of a pow2 int8 grid a range wastes, and the best rescale.

With ``scale = 2**ceil(log2(T / qmax))`` (npu-pow2), a tensor with threshold T uses only T / (qmax * scale) of its
grid: ``waste(T) = ceil(log2(T / qmax)) - log2(T / qmax)`` bits, in [0, 1) (0: T sits on a grid edge). Dividing
the tensor by a > 0 moves T to T / a. :func:`best_alignment` picks the a that minimises the total waste of all
tensors sharing one channel space (they all scale by the same a), putting one of them ``margin`` below an edge.
"""
from __future__ import annotations

import math
from typing import Sequence

DEFAULT_MARGIN = 0.995


def waste(threshold: float, qmax: int = 127) -> float:
    """Returns the bits of the pow2 grid that ``threshold`` leaves unused: ceil(log2(T/qmax)) - log2(T/qmax)."""
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be positive and finite, got {threshold}")
    e = math.log2(threshold / qmax)
    return math.ceil(e) - e


def best_alignment(thresholds: Sequence[float], qmax: int = 127, margin: float = DEFAULT_MARGIN
                   ) -> tuple[float, float, float]:
    """Returns (a, total waste before, total waste after dividing every threshold by a).

    Candidates put one threshold at ``margin`` x 127 x 2^k for the edge just below or just above it; a = 1 is
    always a candidate, so the waste never grows. Ties go to the a closest to 1.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    ts = [float(t) for t in thresholds]
    before = sum(waste(t, qmax) for t in ts)
    cands = [1.0]
    for t in ts:
        k = math.floor(math.log2(t / qmax))
        cands += [t / (qmax * 2.0 ** k * margin), t / (qmax * 2.0 ** (k + 1) * margin)]
    best = min(cands, key=lambda a: (round(sum(waste(t / a, qmax) for t in ts), 12), abs(math.log(a))))
    return best, before, sum(waste(t / best, qmax) for t in ts)
