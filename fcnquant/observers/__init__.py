"""Streaming observers: exact min/max and an exact bit-pattern histogram, both mergeable.

The observers themselves are numpy (the reference); ``fcnquant.observers.fused.update_stats`` feeds both in one
pass with the compiled kernel of ``fcnquant.observers.kernel`` (the C extension ``fcnquant._native``) where it is
built.
"""
from __future__ import annotations

from fcnquant.observers.base import NonFiniteError
from fcnquant.observers.histogram import DEFAULT_MANTISSA_BITS, HistogramObserver, bin_lower_edges
from fcnquant.observers.minmax import MinMaxObserver

__all__ = ["DEFAULT_MANTISSA_BITS", "HistogramObserver", "MinMaxObserver", "NonFiniteError", "bin_lower_edges"]
