"""The compare report: :class:`CompareReport` (the records and JSON), the terminal table and the HTML page."""
from __future__ import annotations

from fcnquant.compare.report.card import CardRow, card_rows, card_table, format_card
from fcnquant.compare.report.compare_report import FORMAT_VERSION, CompareReport

__all__ = ["CompareReport", "FORMAT_VERSION", "CardRow", "card_rows", "card_table", "format_card"]
