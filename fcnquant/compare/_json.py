"""JSON-safe numbers for the compare report's records: NaN and infinities are written as null."""
from __future__ import annotations

import math


def num(v: float | None) -> float | None:
    """Returns a JSON-safe float: None for None, NaN or an infinity."""
    return None if v is None or not math.isfinite(v) else float(v)


def nan_if_none(v) -> float:
    """Returns ``v`` read back from JSON as a float (None as NaN)."""
    return math.nan if v is None else float(v)
