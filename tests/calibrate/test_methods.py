"""Range methods (fcnquant.calibrate.methods): percentile against order statistics, exact minmax, the registry."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.calibrate.methods import METHODS, compute_range, resolve_params
from fcnquant.calibrate.stats import TensorStats
from fcnquant.errors import CalibrationError
from fcnquant.observers import bin_lower_edges
from tests.calibrate.helpers import tensor_stats


# ---------------------------------------------------------------- percentile


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100.0])
def test_percentile_matches_order_statistic_within_one_bin(p):
    rng = np.random.default_rng(13)
    x = (rng.standard_t(3, 100_000) * 2).astype(np.float32)
    ts = tensor_stats(x)
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
    lo, hi = compute_range("percentile", tensor_stats(x), percentile=90, asymmetric=True)
    assert abs(hi - np.percentile(x[x >= 0], 90, method="inverted_cdf")) < 10 * 2.0 ** -10
    assert abs(-lo - np.percentile(-x[x < 0], 90, method="inverted_cdf")) < 2.0 ** -10


# ---------------------------------------------------------------- minmax, registry


def test_minmax_is_exact():
    x = np.random.default_rng(17).standard_normal(12345).astype(np.float32)
    assert compute_range("minmax", tensor_stats(x)) == (float(np.min(x)), float(np.max(x)))


def test_all_zero_tensor_and_empty_stats():
    ts = tensor_stats(np.zeros(100))
    for method in METHODS:
        assert compute_range(method, ts) == (0.0, 0.0)
    with pytest.raises(CalibrationError, match="no finite values"):
        compute_range("kl", TensorStats.new())


def test_registry_and_params():
    assert set(METHODS) == {"minmax", "kl", "percentile", "mse"}
    assert resolve_params("percentile", percentile="99.9") == {"percentile": 99.9, "asymmetric": False}
    assert resolve_params("kl", num_bins="1024", asymmetric="true")["num_bins"] == 1024
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        compute_range("entropy", tensor_stats(np.ones(3)))
    with pytest.raises(CalibrationError, match="no parameter"):
        resolve_params("minmax", percentile=99)
    with pytest.raises(CalibrationError, match="must be int"):
        resolve_params("kl", num_bins="1.5")
    with pytest.raises(CalibrationError, match="percentile must be"):
        compute_range("percentile", tensor_stats(np.ones(3)), percentile=0)
