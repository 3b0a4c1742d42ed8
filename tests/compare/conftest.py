"""The planted model pair the compare API tests share."""
from __future__ import annotations

import pytest

from tests.compare.helpers import write_planted_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``(float, noisy)``: the models of :func:`tests.compare.helpers.write_planted_models` (batch 1)."""
    return write_planted_models(tmp_path_factory.mktemp("models"))
