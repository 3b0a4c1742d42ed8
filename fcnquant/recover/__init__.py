"""fcnquant.recover: win back the accuracy int8 loses (bias correction, equalization, adaptive rounding)."""
from __future__ import annotations

from fcnquant.recover.bias_correction import BiasCorrectionResult, LayerCorrection, correct_biases

__all__ = ["BiasCorrectionResult", "LayerCorrection", "correct_biases"]
