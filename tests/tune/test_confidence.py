"""The tuning drop's bootstrap interval against a plain loop over the same draws with ConfusionMatrix."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.metrics import ConfusionMatrix
from fcnquant.tune.confidence import bootstrap_drop, miou_of, resample_weights, upper_bound


def _per_image(rng, n, c):
    out = np.zeros((n, c, c), np.int64)
    for i in range(n):
        truth = rng.integers(0, c, 300)
        pred = np.where(rng.random(300) < 0.7, truth, rng.integers(0, c, 300))
        np.add.at(out[i], (truth, pred), 1)
    return out


def test_miou_of_equals_confusion_matrix_miou():
    rng = np.random.default_rng(0)
    cms = _per_image(rng, 5, 4)
    cms[2, 3, :] = 0
    cms[2, :, 3] = 0  # class 3 absent: skipped, as mmseg does
    for m in cms:
        cm = ConfusionMatrix(4)
        cm.matrix = m.copy()
        assert miou_of(m) == pytest.approx(cm.miou(), abs=1e-12)
    assert math.isnan(miou_of(np.zeros((3, 3), np.int64)))


def test_bootstrap_equals_a_loop_over_the_same_draws():
    rng = np.random.default_rng(1)
    f, q = _per_image(rng, 12, 3), _per_image(rng, 12, 3)
    got = bootstrap_drop(f, q, resamples=300, level=0.9, seed=4)
    w = resample_weights(12, 300, seed=4)
    drops = []
    for row in w:  # brute force: sum the drawn images' matrices, one draw at a time
        cf, cq = ConfusionMatrix(3), ConfusionMatrix(3)
        cf.matrix = np.tensordot(row, f, axes=1)
        cq.matrix = np.tensordot(row, q, axes=1)
        drops.append(cf.miou() - cq.miou())
    lo, hi = np.quantile(drops, [0.05, 0.95])
    assert (got.lo, got.hi) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
    whole_f, whole_q = ConfusionMatrix(3), ConfusionMatrix(3)
    whole_f.matrix, whole_q.matrix = f.sum(0), q.sum(0)
    assert got.drop == pytest.approx(whole_f.miou() - whole_q.miou(), abs=1e-12) and got.lo <= got.hi
    assert upper_bound(f, q, 0.95, resamples=300, seed=4) == pytest.approx(np.quantile(drops, 0.95), abs=1e-9)
    same = bootstrap_drop(f, f, resamples=50)
    assert same.lo == same.hi == same.drop == 0.0
    with pytest.raises(ValueError):
        bootstrap_drop(f, q[:5])
