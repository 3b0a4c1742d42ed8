"""fcnquant.tune: meet an mIoU budget with the fewest layers left in float, in few evaluations."""
from __future__ import annotations

from fcnquant.tune.api import FLOAT_LAYERS_KEY, over_budget_path, tune
from fcnquant.tune.builder import Builder, QuantizeBuilder
from fcnquant.tune.images import ImageSet, ImageSets, choose_images
from fcnquant.tune.layers import Layer, find_layers
from fcnquant.tune.ranking import Ranking
from fcnquant.tune.result import FloatLayer, TuneResult
from fcnquant.tune.search import Evaluation, SearchOutcome, greedy, search

__all__ = [
    "tune", "TuneResult", "FloatLayer", "Evaluation", "SearchOutcome", "search", "greedy", "Builder",
    "QuantizeBuilder", "Layer", "find_layers", "Ranking", "ImageSet", "ImageSets", "choose_images",
    "FLOAT_LAYERS_KEY", "over_budget_path",
]
