"""The tuner's image sets (fcnquant.tune.images): calibration, tuning and reporting images are disjoint."""
from __future__ import annotations

import pytest


def test_image_sets_are_disjoint_and_overlap_is_refused(tune_voc):
    from fcnquant.data import open_dataset, select_calibration_ids
    from fcnquant.errors import DataError
    from fcnquant.tune import choose_images

    sets = choose_images(tune_voc, num_calib=8, num_tune=10)
    calib, tuning, report = (set(s.ids) for s in (sets.calibration, sets.tuning, sets.reporting))
    assert len(calib) == 8 and len(tuning) == 10 and len(report) == 6
    assert not calib & tuning and not (calib | tuning) & report
    train = open_dataset(tune_voc, "train")
    assert sets.calibration.ids == tuple(select_calibration_ids(train, 8, seed=0))  # as `fcnquant calibrate` picks
    assert tuning <= set(train.ids)
    with pytest.raises(DataError, match="reporting image"):
        choose_images(tune_voc, num_calib=8, num_tune=4, tune_split="val", report_split="val")
    with pytest.raises(DataError, match="only 24"):
        choose_images(tune_voc, num_calib=8, num_tune=25)
