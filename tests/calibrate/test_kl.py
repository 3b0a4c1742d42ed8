"""KL thresholds (fcnquant.calibrate.kl) against a hand-worked example and a per-candidate loop reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.calibrate.kl import kl_divergences, kl_threshold_index
from fcnquant.calibrate.methods import compute_range
from tests.calibrate.helpers import tensor_stats


def kl_loop_reference(h, nq, eps=1e-4):
    """Straightforward per-candidate KL: build p and the expanded q bin by bin (definition in fcnquant.calibrate.kl)."""
    h = np.asarray(h, dtype=np.float64)
    out = []
    for i in range(nq, h.size + 1):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        level = np.minimum(np.arange(i) // (i // nq), nq - 1)  # level of each bin
        level_sum = np.bincount(level, weights=h[:i], minlength=nq)
        level_nonzero = np.bincount(level, weights=(p > 0), minlength=nq)
        q = np.where(p > 0, level_sum[level] / np.maximum(level_nonzero[level], 1), 0.0)
        big_p = p / p.sum()
        big_q = q / q.sum() if q.sum() > 0 else q
        big_q = np.where((big_p > 0) & (big_q == 0), eps * big_p, big_q)
        k = big_p > 0
        out.append(float(np.sum(big_p[k] * np.log(big_p[k] / big_q[k]))))
    return np.array(out)


def pick_reference(values):
    """The selection rule: the last candidate within 1e-12 + 1e-9 * |min| of the minimum (least clipping)."""
    best = min(values)
    return max(k for k, v in enumerate(values) if v <= best + 1e-12 + 1e-9 * abs(best))


def test_kl_worked_example():
    # h = [4, 2, 0, 1], two quantized levels; candidates i = 2, 3, 4 (total 7)
    #  i=2: p=[4, 3] (tail 0+1 folded), levels [0],[1] of h -> q=[4, 2]        P=[4,3]/7, Q=[4,2]/6
    #  i=3: p=[4, 2, 1], levels [0],[1,2]: c=[4, 2], p non-zero in both -> q=[4, 1, 1]   Q=[4,1,1]/6
    #  i=4: p=[4, 2, 0, 1], levels [0,1],[2,3]: c=[6, 1] -> q=[3, 3, 0, 1]      Q=[3,3,0,1]/7
    ln = math.log
    expect = [
        4 / 7 * ln((4 / 7) / (4 / 6)) + 3 / 7 * ln((3 / 7) / (2 / 6)),
        4 / 7 * ln((4 / 7) / (4 / 6)) + 2 / 7 * ln((2 / 7) / (1 / 6)) + 1 / 7 * ln((1 / 7) / (1 / 6)),
        4 / 7 * ln((4 / 7) / (3 / 7)) + 2 / 7 * ln((2 / 7) / (3 / 7)),
    ]
    cands, kl = kl_divergences([4, 2, 0, 1], num_quantized_bins=2)
    np.testing.assert_array_equal(cands, [2, 3, 4])
    np.testing.assert_allclose(kl, expect, rtol=1e-12)
    assert kl_threshold_index([4, 2, 0, 1], 2) == 2  # 0.0196 < 0.0439 < 0.0485


def test_kl_smoothing_worked_example():
    # h = [3, 0, 0, 5]: clipping at i=2 or 3 folds the 5 outliers onto a bin whose level holds no unclipped value,
    # so Q gets eps * P there: KL = 3/8 ln(3/8) + 5/8 ln(1/eps). At i=4, Q == P and KL = 0.
    eps = 1e-3
    cands, kl = kl_divergences([3, 0, 0, 5], 2, eps=eps)
    d = 3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(1 / eps)
    np.testing.assert_allclose(kl, [d, d, 0.0], rtol=1e-12, atol=1e-15)
    assert kl_threshold_index([3, 0, 0, 5], 2) == 4


@pytest.mark.parametrize("seed,n,nq", [(0, 2048, 128), (1, 300, 128), (2, 64, 8), (3, 257, 16), (4, 40, 1),
                                        (5, 1000, 3)])
def test_kl_vectorised_equals_loop_reference(seed, n, nq):
    rng = np.random.default_rng(seed)
    h = rng.poisson(rng.exponential(5, n) * (rng.random(n) < 0.7)).astype(np.float64)
    h[n // 3: n // 2] = 0  # an empty stretch: degenerate (smoothed) candidates
    h[-1] += 3  # outliers at the top
    if seed == 3:
        h = h * 0.37  # fractional counts, as re-binned histograms have
    cands, kl = kl_divergences(h, nq)
    ref = kl_loop_reference(h, nq)
    np.testing.assert_allclose(kl, ref, rtol=1e-9, atol=1e-12)
    assert kl_threshold_index(h, nq) == nq + pick_reference(ref)


def test_kl_constant_tensor_keeps_full_range():
    cands, kl = kl_divergences(np.r_[np.zeros(2047), 10.0])
    assert cands[np.argmin(kl)] == 2048 and kl[-1] == 0.0


def test_kl_range_uses_linear_histogram_and_clips_signed():
    rng = np.random.default_rng(11)
    x = rng.laplace(size=200_000).astype(np.float32)
    x[:3] = [40.0, -55.0, 30.0]  # far outliers that KL should clip
    ts = tensor_stats(x)
    counts, edges = ts.linear(2048)
    ref = counts.copy()
    ref[0] = ref[1]  # zero_bin="neighbour" (the default)
    i = 128 + pick_reference(kl_loop_reference(ref, 128))
    t = edges[i]
    lo, hi = compute_range("kl", ts)
    assert (lo, hi) == (max(float(x.min()), -t), min(float(x.max()), t))
    assert hi < 0.5 * float(x.max())
    # ReLU-like tensor: lo stays at the observed minimum 0
    relu = np.maximum(x, 0)
    lo, hi = compute_range("kl", tensor_stats(relu))
    assert lo == 0.0 and 0 < hi < float(relu.max())


def test_kl_zero_spike_neighbour_vs_keep():
    """A ReLU'd Gaussian: the plain search is dominated by the zero spike; the default neutralises bin 0."""
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal(400_000), 0).astype(np.float32)
    ts = tensor_stats(x)
    counts, edges = ts.linear(2048)
    keep = 128 + pick_reference(kl_loop_reference(counts, 128))
    ref = counts.copy()
    ref[0] = ref[1]
    neighbour = 128 + pick_reference(kl_loop_reference(ref, 128))
    assert compute_range("kl", ts, zero_bin="keep") == (0.0, edges[keep])
    assert compute_range("kl", ts) == (0.0, edges[neighbour])
    # the zero spike drags the plain threshold well below 3 sigma; the default keeps it beyond
    assert edges[keep] < 2.5 < 3.0 < edges[neighbour]


def test_kl_asymmetric_sides_are_independent():
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.exponential(1.0, 100_000), -rng.exponential(0.1, 100_000)]).astype(np.float32)
    ts = tensor_stats(x)
    lo, hi = compute_range("kl", ts, asymmetric=True)
    pos = tensor_stats(x[x >= 0])
    neg = tensor_stats(-x[x < 0])
    assert hi == compute_range("kl", pos)[1]
    assert lo == -compute_range("kl", neg)[1]
