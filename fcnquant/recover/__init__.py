"""fcnquant.recover: win back the accuracy int8 loses — numpy on ONNX graphs, no torch.

- cross-layer equalization, high-bias absorption and power-of-two alignment of the float model
  (``equalize``, ``align_pow2``);
- empirical bias correction of an emitted int8 model (``correct_biases``);
- power-of-two activation scales chosen by the int8 model's output error (``search_activation_scales``);
- AdaRound (``adaround``; numpy: Adam on each layer's exact quadratic loss);
- which passes ``recover=True`` turns on for a target (``resolve_plan``).
"""
from __future__ import annotations

from fcnquant.recover.adaround import AdaRoundResult, LayerStats, adaround
from fcnquant.recover.align import AlignedSpace, AlignResult, align_pow2
from fcnquant.recover.bias_correction import BiasCorrectionResult, LayerCorrection, correct_biases
from fcnquant.recover.cle import Consumer, Layout, Pair, Producer, equalization_scales, equalize_chains
from fcnquant.recover.equalize import EqualizeResult, PairRecord, WeightRange, equalize
from fcnquant.recover.plan import RecoveryPlan, resolve_plan
from fcnquant.recover.scalable import ScalablePair, Skip, find_pairs
from fcnquant.recover.scale_search import ScaleSearchResult, search_activation_scales

__all__ = [
    "AdaRoundResult", "AlignResult", "AlignedSpace", "BiasCorrectionResult", "Consumer", "EqualizeResult",
    "LayerCorrection", "LayerStats", "Layout", "Pair", "PairRecord", "Producer", "RecoveryPlan", "ScalablePair",
    "ScaleSearchResult", "Skip", "WeightRange", "adaround", "align_pow2", "correct_biases", "equalization_scales", "equalize",
    "equalize_chains", "find_pairs", "resolve_plan", "search_activation_scales",
]
