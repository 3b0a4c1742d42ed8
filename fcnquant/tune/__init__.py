"""fcnquant.tune: meet an mIoU budget with the fewest layers left in float, in few evaluations.

    from fcnquant.tune import ImageChoice, TuneOptions, tune
    result = tune("fcn8s.onnx", "fcn8s.int8.onnx", TuneOptions(max_drop=0.5, images=ImageChoice(num_tune=100)),
                  DataConfig("VOCdevkit"), run=executor, quant=QuantConfig(target="npu-pow2"))
"""
from __future__ import annotations

from fcnquant.tune.builder import Builder, QuantizeBuilder, RecoveryBuilder
from fcnquant.tune.images import ImageChoice, ImageSet, ImageSets, choose_images
from fcnquant.tune.layers import Layer, find_layers
from fcnquant.tune.options import TuneOptions
from fcnquant.tune.ranking import Ranking
from fcnquant.tune.result import FloatLayer, TuneResult
from fcnquant.tune.search import Evaluation, SearchOutcome, greedy, search
from fcnquant.tune.tuner import FLOAT_LAYERS_KEY, over_budget_path, tune

__all__ = [
    "tune", "TuneOptions", "TuneResult", "FloatLayer", "Evaluation", "SearchOutcome", "search", "greedy",
    "Builder", "QuantizeBuilder", "RecoveryBuilder", "Layer", "find_layers", "Ranking", "ImageChoice", "ImageSet",
    "ImageSets", "choose_images", "FLOAT_LAYERS_KEY", "over_budget_path",
]
