"""fcnquant.compare: per-layer drift and final-metric deltas between a float model and its quantized version."""
from __future__ import annotations

from fcnquant.compare.api import compare_models
from fcnquant.compare.drift import DriftAccumulator, DriftMetrics
from fcnquant.compare.drift_pass import DEFAULT_DRIFT_IMAGES, DriftResult, drift_ids, layer_drift
from fcnquant.compare.final_pass import final_metrics
from fcnquant.compare.gallery import GALLERY_IMAGES, GalleryImage
from fcnquant.compare.pairing import Pairing, TensorPair, pair_tensors
from fcnquant.compare.report import ActivationHistogram, CompareReport, FinalMetrics, LayerDrift

__all__ = [
    "compare_models", "CompareReport", "LayerDrift", "FinalMetrics", "ActivationHistogram", "DriftAccumulator",
    "DriftMetrics", "Pairing", "TensorPair", "pair_tensors", "GalleryImage", "GALLERY_IMAGES", "final_metrics",
    "layer_drift", "drift_ids", "DriftResult", "DEFAULT_DRIFT_IMAGES",
]
