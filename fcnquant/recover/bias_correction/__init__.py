"""Empirical bias correction of an int8 QDQ model (:mod:`~fcnquant.recover.bias_correction.correction`): the
per-channel means it measures (``channel_means``, numpy only) and the graph side (``targets``)."""
from __future__ import annotations

from fcnquant.recover.bias_correction.correction import (ERRORS, FORMS, SCHEDULES, BiasCorrectionOptions,
                                                         BiasCorrectionResult, LayerCorrection, correct_biases,
                                                         means_shard)
from fcnquant.recover.bias_correction.taps import TapGeometry, TapMeans
from fcnquant.recover.bias_correction.targets import (dependency_levels, find_targets, float_tap_accumulators,
                                                      float_tap_specs, logit_layers)

__all__ = ["ERRORS", "FORMS", "SCHEDULES", "BiasCorrectionOptions", "BiasCorrectionResult", "LayerCorrection",
           "TapGeometry", "TapMeans", "correct_biases", "dependency_levels", "find_targets", "float_tap_accumulators",
           "float_tap_specs", "logit_layers", "means_shard"]
