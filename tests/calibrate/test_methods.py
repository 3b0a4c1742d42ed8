"""Scale methods and qparams against independent references: hand-worked KL, loop KL, brute-force percentile/MSE."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.calibrate.kl import kl_divergences, kl_threshold_index
from fcnquant.calibrate.methods import METHODS, compute_range, resolve_params
from fcnquant.calibrate.mse import mse_errors
from fcnquant.calibrate.qparams import MIN_SCALE, TARGETS, qparams
from fcnquant.calibrate.stats import TensorStats
from fcnquant.errors import CalibrationError
from fcnquant.observers import bin_lower_edges


def _stats(x: np.ndarray, m: int = 10) -> TensorStats:
    ts = TensorStats.new(m)
    ts.update(np.asarray(x, np.float32))
    return ts


# ---------------------------------------------------------------- KL


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
    ts = _stats(x)
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
    lo, hi = compute_range("kl", _stats(relu))
    assert lo == 0.0 and 0 < hi < float(relu.max())


def test_kl_zero_spike_neighbour_vs_keep():
    """A ReLU'd Gaussian: the plain search is dominated by the zero spike; the default neutralises bin 0."""
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal(400_000), 0).astype(np.float32)
    ts = _stats(x)
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
    ts = _stats(x)
    lo, hi = compute_range("kl", ts, asymmetric=True)
    pos = _stats(x[x >= 0])
    neg = _stats(-x[x < 0])
    assert hi == compute_range("kl", pos)[1]
    assert lo == -compute_range("kl", neg)[1]


# ---------------------------------------------------------------- percentile


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100.0])
def test_percentile_matches_order_statistic_within_one_bin(p):
    rng = np.random.default_rng(13)
    x = (rng.standard_t(3, 100_000) * 2).astype(np.float32)
    ts = _stats(x)
    t = ts.hist.quantile(p / 100, vmin=ts.min, vmax=ts.max)
    ref = float(np.percentile(np.abs(x).astype(np.float64), p, method="inverted_cdf"))
    mag = np.float32(ref).view(np.uint32) >> 13
    width = float(bin_lower_edges(mag + 1, 10) - bin_lower_edges(mag, 10))
    assert abs(t - ref) <= width
    lo, hi = compute_range("percentile", ts, percentile=p)
    assert (lo, hi) == (max(ts.min, -t), min(ts.max, t))
    if p == 100.0:
        assert (lo, hi) == (float(x.min()), float(x.max()))


def test_percentile_asymmetric():
    rng = np.random.default_rng(14)
    x = np.concatenate([rng.uniform(0, 10, 10_000), -rng.uniform(0, 1, 10_000)]).astype(np.float32)
    lo, hi = compute_range("percentile", _stats(x), percentile=90, asymmetric=True)
    assert abs(hi - np.percentile(x[x >= 0], 90, method="inverted_cdf")) < 10 * 2.0 ** -10
    assert abs(-lo - np.percentile(-x[x < 0], 90, method="inverted_cdf")) < 2.0 ** -10


# ---------------------------------------------------------------- MSE


def mse_dense_reference(h, w, steps, samples=4001):
    """E_i by sampling each bin densely (midpoint rule) and quantizing the samples directly."""
    h = np.asarray(h, float)
    out = []
    for i in range(1, h.size + 1):
        t = i * w
        s = t / steps
        e = 0.0
        for k, c in enumerate(h):
            if c == 0:
                continue
            x = (k + (np.arange(samples) + 0.5) / samples) * w
            q = np.clip(np.round(x / s), 0, steps) * s
            e += c * np.mean((x - q) ** 2)
        out.append(e)
    return np.array(out)


def test_mse_exact_rounding_model_against_dense_sampling():
    h = [5, 0, 3, 1, 0, 0, 2, 0, 1, 4, 0, 0, 0, 0, 0, 1]
    cands, err = mse_errors(h, 0.25, steps=3)
    ref = mse_dense_reference(h, 0.25, 3)
    np.testing.assert_array_equal(cands, np.arange(1, 17))
    np.testing.assert_allclose(err, ref, rtol=1e-5)


def test_mse_range_is_near_the_brute_force_optimum_on_raw_samples():
    rng = np.random.default_rng(15)
    x = rng.laplace(size=100_000).astype(np.float32)
    ts = _stats(x)
    lo, hi = compute_range("mse", ts, num_bins=256)
    t_model = hi

    def raw_error(t):
        s = t / 127
        q = np.clip(np.round(x / s), -127, 127) * s
        return float(np.mean((x.astype(np.float64) - q) ** 2))

    grid = ts.amax * np.arange(1, 257) / 256
    raw = np.array([raw_error(t) for t in grid])
    assert raw_error(t_model) <= raw.min() * 1.01
    assert abs(t_model - grid[np.argmin(raw)]) <= 3 * grid[0]  # within a few candidates of the raw optimum
    assert lo == -hi and 0 < hi < ts.amax


def test_mse_steps_follow_the_target():
    rng = np.random.default_rng(16)
    relu = np.maximum(rng.standard_normal(50_000), 0).astype(np.float32)
    ts = _stats(relu)
    assert compute_range("mse", ts, target="ort-cpu") == compute_range("mse", ts, steps=255)
    assert compute_range("mse", ts, target="tensorrt") == compute_range("mse", ts, steps=127)
    assert compute_range("mse", ts) == compute_range("mse", ts, steps=127)


# ---------------------------------------------------------------- minmax, registry


def test_minmax_is_exact():
    x = np.random.default_rng(17).standard_normal(12345).astype(np.float32)
    assert compute_range("minmax", _stats(x)) == (float(np.min(x)), float(np.max(x)))


def test_all_zero_tensor_and_empty_stats():
    ts = _stats(np.zeros(100))
    for method in METHODS:
        assert compute_range(method, ts) == (0.0, 0.0)
    with pytest.raises(CalibrationError, match="no finite values"):
        compute_range("kl", TensorStats.new())


def test_registry_and_params():
    assert set(METHODS) == {"minmax", "kl", "percentile", "mse"}
    assert resolve_params("percentile", percentile="99.9") == {"percentile": 99.9, "asymmetric": False}
    assert resolve_params("kl", num_bins="1024", asymmetric="true")["num_bins"] == 1024
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        compute_range("entropy", _stats(np.ones(3)))
    with pytest.raises(CalibrationError, match="no parameter"):
        resolve_params("minmax", percentile=99)
    with pytest.raises(CalibrationError, match="must be int"):
        resolve_params("kl", num_bins="1.5")
    with pytest.raises(CalibrationError, match="percentile must be"):
        compute_range("percentile", _stats(np.ones(3)), percentile=0)


# ---------------------------------------------------------------- qparams


def test_qparams_ort_cpu_uint8_asymmetric():
    lo, hi = -1.5, 4.2
    scale, zp = qparams(lo, hi, "ort-cpu")
    assert scale == float(np.float32((4.2 + 1.5) / 255))
    assert zp == round(1.5 / scale) and 0 <= zp <= 255
    # ReLU range: zero point 0, scale hi / 255; a positive-only range is widened to include 0
    assert qparams(0.0, 6.0, "ort-cpu") == (float(np.float32(6.0 / 255)), 0)
    assert qparams(2.0, 6.0, "ort-cpu") == qparams(0.0, 6.0, "ort-cpu")
    assert qparams(-3.0, -1.0, "ort-cpu") == (float(np.float32(3.0 / 255)), 255)


def test_qparams_symmetric_targets():
    scale, zp = qparams(-0.3, 2.54, "tensorrt")
    assert (scale, zp) == (float(np.float32(2.54 / 127)), 0)
    s2, zp2 = qparams(-0.3, 2.54, "npu-pow2")
    assert zp2 == 0 and math.log2(s2).is_integer()
    assert 2.54 / 127 <= s2 < 2 * 2.54 / 127
    assert qparams(0.0, 127 * 0.25, "npu-pow2")[0] == 0.25  # already a power of two: unchanged


def test_qparams_degenerate_and_bad_ranges():
    for name in TARGETS:
        scale, zp = qparams(0.0, 0.0, name)
        assert scale == MIN_SCALE and zp == 0
    with pytest.raises(CalibrationError, match="invalid range"):
        qparams(float("nan"), 1.0, "ort-cpu")
    with pytest.raises(CalibrationError, match="invalid range"):
        qparams(2.0, 1.0, "tensorrt")
    with pytest.raises(CalibrationError, match="unknown target"):
        qparams(0.0, 1.0, "gpu")
