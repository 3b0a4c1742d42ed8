"""Per-layer drift: the streaming metrics (:mod:`.metrics`, with their compiled kernel :mod:`.kernel`) and the
drift pass that measures them over images (:mod:`.measure`)."""
from __future__ import annotations

from fcnquant.compare.drift.measure import (DEFAULT_DRIFT_IMAGES, DriftResult, DriftShard, DriftSpec, DriftSums,
                                            drift_ids, drift_shard, drift_sums, layer_drift, merge_drift)
from fcnquant.compare.drift.metrics import DriftAccumulator, DriftMetrics, ExactSum, LayerDrift, QuantizedValues

__all__ = ["DEFAULT_DRIFT_IMAGES", "DriftAccumulator", "DriftMetrics", "DriftResult", "DriftShard", "DriftSpec",
           "DriftSums", "ExactSum", "LayerDrift", "QuantizedValues", "drift_ids", "drift_shard", "drift_sums",
           "layer_drift", "merge_drift"]
