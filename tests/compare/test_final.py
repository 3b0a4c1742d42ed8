"""Final-output counters (fcnquant.compare.final): the boundary band against brute force, changed pixels counted."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.compare.final import FinalAccumulator, boundary_band
from tests.compare.helpers import boundary_band_brute_force


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_boundary_band_matches_brute_force(radius):
    rng = np.random.default_rng(4)
    labels = np.zeros((23, 31), dtype=np.uint8)
    labels[5:15, 4:12] = 7
    labels[10:20, 18:29] = 255
    labels[rng.random(labels.shape) < 0.01] = 3
    assert np.array_equal(boundary_band(labels, radius), boundary_band_brute_force(labels, radius))
    batch = np.stack([labels, labels[::-1]])
    got = boundary_band(batch, radius)
    assert np.array_equal(got[1], boundary_band_brute_force(labels[::-1], radius))


def test_final_accumulator_counts_changed_pixels_overall_and_near_boundaries():
    labels = np.zeros((1, 12, 12), dtype=np.uint8)
    labels[0, 3:9, 3:9] = 5  # a square object
    pred_f = labels.copy()
    pred_q = labels.copy()
    pred_q[0, 0, 0] = 1  # far from the boundary (corner)
    pred_q[0, 3, 5] = 0  # on the object's edge
    acc = FinalAccumulator(21, boundary_radius=1)
    acc.update(pred_f, pred_q, labels)
    band = boundary_band_brute_force(labels[0], 1)
    assert acc.pixels == 144 and acc.changed == 2
    assert acc.boundary_pixels == int(band.sum()) and acc.boundary_changed == 1
    assert acc.changed_share == pytest.approx(2 / 144)
    assert acc.boundary_changed_share == pytest.approx(1 / band.sum())
    assert acc.cm_float.miou() == pytest.approx(100.0)  # float prediction equals the labels
    # without labels the band comes from the float prediction (here the same)
    unl = FinalAccumulator(21, boundary_radius=1)
    unl.update(pred_f, pred_q)
    assert not unl.labelled and unl.boundary_pixels == int(band.sum()) and unl.boundary_changed == 1
