"""fcnquant.compare: per-layer drift and final-metric deltas between a float model and its quantized version.

:func:`compare_models` runs two passes (:mod:`.final`: both models' final metrics and the gallery's images;
:mod:`.drift`: per-layer drift and the activation histograms), together in one pass over the images (:mod:`.joint`),
over the tensors :mod:`.tensors` pairs, and returns the :class:`CompareReport` (:mod:`.report`: JSON, terminal
table, HTML page).
"""
from __future__ import annotations

from fcnquant.compare.api import CompareOptions, compare_models
from fcnquant.compare.drift import (DEFAULT_DRIFT_IMAGES, DriftAccumulator, DriftMetrics, DriftResult, DriftSpec,
                                    LayerDrift, drift_ids, layer_drift)
from fcnquant.compare.final import FinalMetrics, final_metrics
from fcnquant.compare.gallery import GALLERY_IMAGES, GalleryImage
from fcnquant.compare.histograms import ActivationHistogram
from fcnquant.compare.report import CardRow, CompareReport, card_rows, card_table, format_card
from fcnquant.compare.tensors.pairing import Pairing, TensorPair, pair_tensors

__all__ = [
    "compare_models", "CompareOptions", "CompareReport", "LayerDrift", "FinalMetrics", "ActivationHistogram",
    "DriftAccumulator", "DriftMetrics", "Pairing", "TensorPair", "pair_tensors", "GalleryImage", "GALLERY_IMAGES",
    "final_metrics", "layer_drift", "drift_ids", "DriftResult", "DriftSpec", "DEFAULT_DRIFT_IMAGES",
    "CardRow", "card_rows", "card_table", "format_card",
]
