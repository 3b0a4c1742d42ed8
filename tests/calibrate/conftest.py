"""The tiny FCN and the synthetic images the collection and calibration API tests share."""
from __future__ import annotations

import pytest

from fcnquant.data import open_dataset
from tests.calibrate.helpers import tiny_fcn


@pytest.fixture(scope="module")
def voc(synthetic_voc):
    """The train split (7 images) of a small synthetic VOC set."""
    return open_dataset(synthetic_voc(train=7, val=1, size=40, seed=3), "train")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny FCN of :func:`tests.calibrate.helpers.tiny_fcn` with a dynamic batch."""
    return tiny_fcn(tmp_path_factory.mktemp("model") / "tiny.onnx")
