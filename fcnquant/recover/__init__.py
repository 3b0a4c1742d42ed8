"""fcnquant.recover: win back the accuracy int8 loses (bias correction, equalization, adaptive rounding)."""
from __future__ import annotations

from fcnquant.recover.adaround import AdaRoundResult, LayerStats, adaround
from fcnquant.recover.bias_correction import BiasCorrectionResult, LayerCorrection, correct_biases

__all__ = ["AdaRoundResult", "BiasCorrectionResult", "LayerCorrection", "LayerStats", "adaround", "correct_biases"]
