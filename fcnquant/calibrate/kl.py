"""KL-divergence (entropy) threshold selection, TensorRT style, vectorised over every candidate threshold.

Definition (``h`` = histogram of ``|x|`` with ``n`` equal bins on ``[0, max|x|]``, ``nq`` = ``num_quantized_bins``;
defaults n = 2048, nq = 128). For every candidate ``i`` in ``nq..n`` (clip at the upper edge of bin ``i - 1``):

1. Reference ``p``: the first ``i`` bins, with the clipped tail ``t_i = sum(h[i:])`` added to the last one:
   ``p_k = h_k`` for ``k < i - 1``, ``p_{i-1} = h_{i-1} + t_i``.
2. Candidate ``q``: the *unclipped* bins ``h[:i]`` merged into ``nq`` levels of ``m = i // nq`` bins each (the last
   level also takes the remaining ``i - nq * m`` bins), then each level's sum ``c_j`` spread uniformly over the bins
   of that level where ``p`` is non-zero: ``q_k = c_j / n_j`` if ``p_k > 0`` else 0.
3. ``P = p / sum(p)``, ``Q = q / sum(q)``. ``Q_k = 0`` with ``P_k > 0`` happens only for the last bin, when the last
   level holds no unclipped values but the tail is non-empty; there ``Q_k := eps * P_k`` (default ``eps = 1e-4``:
   each unit of such mass costs ``ln(1/eps)`` = 9.2 nats). Nothing else is smoothed (``0 * ln 0 = 0``).
4. ``KL_i = sum_{P_k > 0} P_k * ln(P_k / Q_k)``.

The chosen candidate is the minimiser; candidates within floating-point noise of the minimum (``1e-12 + 1e-9 *
min``) count as ties and the largest one wins (least clipping), which makes the choice independent of summation
order. The threshold is its clip point ``i * bin_width`` (TensorRT's slide uses ``(m + 0.5) * width`` for the
0-based minimising index, half a bin inside the candidate's own range).

Vectorisation: ``sum_k P_k ln P_k`` comes from a running sum of ``h ln h``; since ``Q`` is constant over the
non-zero bins of a level, ``sum_k P_k ln Q_k = sum_j (p-mass of level j) * ln(c_j / (n_j sum(q)))``. Candidates
sharing the merge width ``m`` share their first ``nq - 1`` levels, so one loop over the ``n // nq`` widths
(16 by default) with vector operations over the candidates of each width computes every ``KL_i``; level sums are
formed locally (``np.add.reduceat`` and short running sums) so tiny levels keep full precision.
"""
from __future__ import annotations

import numpy as np

from fcnquant.errors import CalibrationError


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros_like(v)
    pos = v > 0
    out[pos] = v[pos] * np.log(v[pos])
    return out


def kl_divergences(
    hist: np.ndarray, num_quantized_bins: int = 128, eps: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(candidates, kl)``: every candidate bin count ``i`` in ``nq..n`` and its ``KL(P || Q)``.

    ``hist`` is a histogram of ``|x|`` (non-negative counts, float or int); see the module docstring for the
    exact definition of ``P``, ``Q`` and the smoothing.
    """
    h = np.asarray(hist, dtype=np.float64)
    n, nq = h.size, int(num_quantized_bins)
    if h.ndim != 1 or nq < 1 or n < nq:
        raise CalibrationError(f"KL needs a 1-D histogram with at least num_quantized_bins={nq} bins, got {h.shape}")
    if not (np.isfinite(h).all() and (h >= 0).all()):
        raise CalibrationError("KL needs finite, non-negative histogram counts")
    if not 0 < eps < 1:
        raise CalibrationError(f"eps must be in (0, 1), got {eps}")
    total = float(h.sum())
    if total <= 0:
        raise CalibrationError("KL needs a non-empty histogram")

    nzf = (h > 0).astype(np.int64)
    nz_cum = np.concatenate(([0], np.cumsum(nzf)))  # exact counts of non-zero bins below each edge
    tail = np.concatenate((np.cumsum(h[::-1])[::-1], [0.0]))  # tail[i] = sum(h[i:]), summed from the small end
    tail_nz = nz_cum[-1] - nz_cum  # tail_nz[i] = number of non-zero bins in h[i:]
    xlx_cum = np.concatenate(([0.0], np.cumsum(_xlogx(h))))

    cands = np.arange(nq, n + 1)
    kl = np.empty(cands.size, dtype=np.float64)
    log_total = np.log(total)
    for m in range(1, n // nq + 1):
        i = np.arange(m * nq, min((m + 1) * nq, n + 1))  # candidates whose merge width is m
        s = (nq - 1) * m  # start of the last level
        # first nq - 1 levels: identical for every candidate of this width
        if nq > 1:
            starts = np.arange(0, s, m)
            c = np.add.reduceat(h[:s], starts)
            nzc = np.add.reduceat(nzf[:s], starts)
            full = nzc > 0
            c_first = float(c[full].sum())
            t_first = float((c[full] * np.log(c[full] / nzc[full])).sum())
        else:
            c_first = t_first = 0.0
        # last level [s, i): local running sums over at most 2m - 1 bins
        local = np.concatenate(([0.0], np.cumsum(h[s:i[-1]])))
        c_last = local[i - s]
        nz_last_unfolded = nz_cum[i] - nz_cum[s]
        t_i = tail[i]
        t_pos = tail_nz[i] > 0
        last_bin_zero = nzf[i - 1] == 0
        n_last = nz_last_unfolded + (last_bin_zero & t_pos)
        sq = c_first + c_last  # sum(q): every level with values has a non-zero bin of p
        p_last = h[i - 1] + t_i
        a = (xlx_cum[i - 1] + _xlogx(p_last)) / total - log_total  # sum P ln P
        with np.errstate(divide="ignore", invalid="ignore"):
            log_sq = np.where(sq > 0, np.log(sq), 0.0)
            has_last = nz_last_unfolded > 0
            mass_last = c_last + t_i
            b_last = np.where(has_last, mass_last * (np.log(c_last / np.maximum(n_last, 1)) - log_sq), 0.0)
            # last level empty but tail clipped onto bin i-1: Q := eps * P there
            degenerate = ~has_last & t_pos
            b_deg = np.where(degenerate, (t_i / total) * np.log(eps * t_i / total), 0.0)
        b = (t_first - c_first * log_sq + b_last) / total + b_deg  # sum P ln Q
        kl[i - nq] = a - b
    return cands, kl


def last_minimum(values: np.ndarray, rtol: float = 1e-9, atol: float = 1e-12) -> int:
    """Returns the index of the last value within floating-point noise of the minimum
    (``<= min + atol + rtol * |min|``), so near-ties go to the largest candidate, i.e. the least clipping."""
    v = np.asarray(values, dtype=np.float64)
    lo = float(v.min())
    return int(np.flatnonzero(v <= lo + atol + rtol * abs(lo))[-1])


def kl_threshold_index(hist: np.ndarray, num_quantized_bins: int = 128, eps: float = 1e-4) -> int:
    """Returns the candidate bin count ``i`` with the smallest KL divergence (near-ties: the largest ``i``)."""
    cands, kl = kl_divergences(hist, num_quantized_bins, eps)
    return int(cands[last_minimum(kl)])
