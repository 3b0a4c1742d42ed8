"""fcnquant.recover: win back the accuracy int8 loses — numpy on ONNX graphs, no torch.

One subpackage per algorithm, each with its numerics (numpy only, no onnx), its graph code, its image passes
(shard functions run by a :class:`~fcnquant.execute.Executor`: in this process or on a cluster, with the same
result) and its driver:

- ``equalize``: cross-layer equalization, high-bias absorption and power-of-two alignment of the float model
  (:func:`equalize`, :func:`align_pow2`);
- ``adaround``: AdaRound (numpy: Adam on each layer's exact quadratic loss; :func:`adaround`);
- ``bias_correction``: empirical bias correction of an emitted int8 model (:func:`correct_biases`);
- ``scale_search``: power-of-two activation scales chosen by the int8 model's output error
  (:func:`search_activation_scales`, :func:`output_error`);
- ``plan``: which passes ``recover=True`` turns on for a target (:func:`resolve_plan`).
"""
from __future__ import annotations

from fcnquant.recover.adaround import AdaRoundOptions, AdaRoundResult, LayerStats, adaround
from fcnquant.recover.bias_correction import (BiasCorrectionOptions, BiasCorrectionResult, LayerCorrection,
                                              correct_biases)
from fcnquant.recover.equalize import (AlignedSpace, AlignResult, Consumer, EqualizeOptions, EqualizeResult, Layout,
                                       Pair, PairRecord, Producer, ScalablePair, Skip, WeightRange, align_pow2,
                                       equalization_scales, equalize, equalize_chains, find_pairs)
from fcnquant.recover.plan import RecoveryPlan, resolve_plan
from fcnquant.recover.scale_search import ScaleSearchOptions, ScaleSearchResult, output_error, search_activation_scales

__all__ = [
    "AdaRoundOptions", "AdaRoundResult", "AlignResult", "AlignedSpace", "BiasCorrectionOptions",
    "BiasCorrectionResult", "Consumer", "EqualizeOptions", "EqualizeResult", "LayerCorrection", "LayerStats",
    "Layout", "Pair", "PairRecord", "Producer", "RecoveryPlan", "ScalablePair", "ScaleSearchOptions",
    "ScaleSearchResult", "Skip", "WeightRange", "adaround", "align_pow2", "correct_biases", "equalization_scales",
    "equalize", "equalize_chains", "find_pairs", "output_error", "resolve_plan", "search_activation_scales",
]
