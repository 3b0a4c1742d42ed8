"""fcnquant.check: whether a QDQ model runs as a target's integer arithmetic (graph inspection, no inference)."""
from __future__ import annotations

from fcnquant.check.check import EXIT_NOT_LEGAL, CheckReport, Finding, check_model, write_json

__all__ = ["EXIT_NOT_LEGAL", "CheckReport", "Finding", "check_model", "write_json"]
