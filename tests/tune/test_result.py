"""The tune result's "cannot resolve" note: when the drop's interval is wider than the budget, and how many
tuning images would resolve it."""
from __future__ import annotations

import math

from fcnquant.tune.confidence import DropInterval
from fcnquant.tune.result import resolution_note


def test_an_interval_wider_than_the_budget_cannot_resolve_it_and_says_how_many_images_would():
    # +-0.4 on 200 images against 0.05: the half-width scales as 1/sqrt(n), so 200 * (0.4 / 0.05)**2 = 12800
    note = resolution_note(DropInterval(0.1, -0.3, 0.5, 0.95, 2000), 200, 0.05)
    assert note is not None and "cannot resolve a budget of 0.05" in note and "+-0.400" in note
    assert "about 12800 tuning images" in note
    assert math.ceil(200 * (0.4 / 0.05) ** 2) == 12800


def test_an_interval_within_the_budget_resolves_it():
    assert resolution_note(DropInterval(0.1, 0.06, 0.14, 0.95, 2000), 200, 0.05) is None
    assert resolution_note(DropInterval(0.1, math.nan, math.nan, 0.95, 2000), 200, 0.05) is None
    assert resolution_note(None, 200, 0.05) is None
