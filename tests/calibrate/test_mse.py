"""MSE ranges (fcnquant.calibrate.mse) against dense sampling of the rounding model and brute force on raw values."""
from __future__ import annotations

import numpy as np

from fcnquant.calibrate.methods import compute_range
from fcnquant.calibrate.mse import mse_errors
from tests.calibrate.helpers import tensor_stats


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
    ts = tensor_stats(x)
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
    ts = tensor_stats(relu)
    assert compute_range("mse", ts, target="ort-cpu") == compute_range("mse", ts, steps=255)
    assert compute_range("mse", ts, target="tensorrt") == compute_range("mse", ts, steps=127)
    assert compute_range("mse", ts) == compute_range("mse", ts, steps=127)
