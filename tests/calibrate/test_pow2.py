"""Power-of-two scales chosen by error: equal to a brute-force search over exponents on the raw values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.calibrate.pow2 import choose_pow2_scale, expected_sq_error
from fcnquant.calibrate.stats import TensorStats
from fcnquant.calibrate.table import build_table
from fcnquant.quantize.weights import symmetric_scales


def brute_error(x: np.ndarray, scale: float, qmax: int = 127) -> float:
    """Independent: quantize every value on the clipped symmetric grid and sum the squared errors."""
    x = x.astype(np.float64)
    return float(((x - np.clip(np.round(x / scale), -qmax, qmax) * scale) ** 2).sum())


def brute_best_exponent(x: np.ndarray, exponents) -> int:
    errs = [brute_error(x, 2.0 ** e) for e in exponents]
    best = min(errs)
    return max(e for e, v in zip(exponents, errs) if v <= best * (1 + 1e-12))  # ties: the larger scale


def neighbours(raw: float) -> list[int]:
    up = math.ceil(math.log2(raw))
    return [up - 1, up]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["gauss", "laplace", "relu", "uniform"])
def test_weight_scales_equal_brute_force_over_exponents(kind, seed):
    rng = np.random.default_rng(seed)
    shape = (8, 4, 3, 3)
    w = {"gauss": rng.standard_normal(shape), "laplace": rng.laplace(size=shape),
         "relu": np.maximum(rng.standard_normal(shape), 0), "uniform": rng.uniform(-1, 1, shape)}[kind]
    w = (w * rng.uniform(0.01, 2.0, (8, 1, 1, 1))).astype(np.float32)
    got = symmetric_scales(w, 0, pow2=True, pow2_rounding="error")
    for c in range(8):
        raw = float(np.abs(w[c]).max()) / 127
        best = brute_best_exponent(w[c], neighbours(raw))
        assert got[c] == 2.0 ** best
        # and over a wide range of exponents the best power of two is one of the two neighbours
        assert brute_best_exponent(w[c], range(-40, 10)) in neighbours(raw)
    # per tensor: one choice for all
    t = symmetric_scales(w, None, pow2=True, pow2_rounding="error")
    assert float(t) == 2.0 ** brute_best_exponent(w, neighbours(float(np.abs(w).max()) / 127))


def test_rounding_up_is_kept_by_default_and_never_clips():
    w = np.array([[1.0, -0.3], [0.51, 0.2]], np.float32)
    up = symmetric_scales(w, 0, pow2=True)
    assert list(up) == [2.0 ** -6, 2.0 ** -7]  # 1/127 -> 2^-6 (0.0156); 0.51/127 = 0.00402 -> 2^-7
    assert (np.abs(w).max(axis=1) <= 127 * up).all()


def test_single_value_prefers_the_exact_grid():
    # the module's worked example: x = 1.0 is exact on 2^-6 and clipped to 0.9921875 on 2^-7
    assert symmetric_scales(np.array([1.0], np.float32), None, pow2=True, pow2_rounding="error") == 2.0 ** -6


def test_histogram_error_matches_the_values():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000).astype(np.float32)
    ts = TensorStats.new()
    ts.update(x)
    counts, edges = ts.linear(4096)
    for e in (-7, -6, -5, -4):
        s = 2.0 ** e
        assert expected_sq_error(counts, edges, s) == pytest.approx(brute_error(np.abs(x), s), rel=0.03)


@pytest.mark.parametrize("seed", range(8))
def test_activation_scale_choice_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = (np.maximum(rng.standard_normal(300_000), 0) * rng.uniform(0.1, 10)).astype(np.float32)
    ts = TensorStats.new()
    ts.update(x)
    counts, edges = ts.linear(4096)
    raw = float(x.max()) / 127
    exps = neighbours(raw)
    errs = [brute_error(x, 2.0 ** e) for e in exps]
    got = choose_pow2_scale(counts, edges, raw)
    if abs(errs[0] - errs[1]) > 0.05 * max(errs):  # a clear winner: the histogram must find it
        assert got == 2.0 ** exps[int(np.argmin(errs))]
    else:
        assert got in (2.0 ** exps[0], 2.0 ** exps[1])


def test_table_records_the_rounding_and_uses_it():
    from fcnquant.calibrate.stats import CalibrationStats

    rng = np.random.default_rng(0)
    stats = CalibrationStats.new(["a"], model_sha256="0" * 64)
    # a Gaussian whose max sits just above a power of two times 127: rounding up doubles the step
    x = rng.standard_normal(100_000)
    x = (x / np.abs(x).max() * 127 * 2.0 ** -5 * 1.02).astype(np.float32)
    stats.tensors["a"].update(x)
    up = build_table(stats, "minmax", "npu-pow2")
    err = build_table(stats, "minmax", "npu-pow2", pow2_rounding="error")
    assert up.tensors["a"].scale == 2.0 ** -4 and up.pow2_rounding == "up"
    assert err.tensors["a"].scale == 2.0 ** -5 and err.pow2_rounding == "error"
    assert brute_error(x, 2.0 ** -5) < brute_error(x, 2.0 ** -4)
    # ort-cpu has no power-of-two rule: the option changes nothing
    assert build_table(stats, "minmax", "ort-cpu", pow2_rounding="error").tensors["a"] == \
        build_table(stats, "minmax", "ort-cpu").tensors["a"]
