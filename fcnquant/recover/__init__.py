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

import importlib
import sys
import types
from typing import TYPE_CHECKING

#: every public name: the subpackage that defines it, imported on first use (``fcnquant.recover.plan`` is read
#: by every calibration; the passes' modules only when a pass runs)
_EXPORTS = {
    **dict.fromkeys(["AdaRoundOptions", "AdaRoundResult", "LayerStats", "adaround"], "adaround"),
    **dict.fromkeys(["BiasCorrectionOptions", "BiasCorrectionResult", "LayerCorrection", "correct_biases"],
                    "bias_correction"),
    **dict.fromkeys(["AlignedSpace", "AlignResult", "Consumer", "EqualizeOptions", "EqualizeResult", "Layout", "Pair",
                     "PairRecord", "Producer", "ScalablePair", "Skip", "WeightRange", "align_pow2",
                     "equalization_scales", "equalize", "equalize_chains", "find_pairs"], "equalize"),
    **dict.fromkeys(["RecoveryPlan", "resolve_plan"], "plan"),
    **dict.fromkeys(["ScaleSearchOptions", "ScaleSearchResult", "output_error", "search_activation_scales"],
                    "scale_search"),
}

__all__ = [
    "AdaRoundOptions", "AdaRoundResult", "AlignResult", "AlignedSpace", "BiasCorrectionOptions",
    "BiasCorrectionResult", "Consumer", "EqualizeOptions", "EqualizeResult", "LayerCorrection", "LayerStats",
    "Layout", "Pair", "PairRecord", "Producer", "RecoveryPlan", "ScalablePair", "ScaleSearchOptions",
    "ScaleSearchResult", "Skip", "WeightRange", "adaround", "align_pow2", "correct_biases", "equalization_scales",
    "equalize", "equalize_chains", "find_pairs", "output_error", "resolve_plan", "search_activation_scales",
]

if TYPE_CHECKING:
    from fcnquant.recover.adaround import AdaRoundOptions, AdaRoundResult, LayerStats, adaround
    from fcnquant.recover.bias_correction import (BiasCorrectionOptions, BiasCorrectionResult, LayerCorrection,
                                                  correct_biases)
    from fcnquant.recover.equalize import (AlignedSpace, AlignResult, Consumer, EqualizeOptions, EqualizeResult,
                                           Layout, Pair, PairRecord, Producer, ScalablePair, Skip, WeightRange,
                                           align_pow2, equalization_scales, equalize, equalize_chains, find_pairs)
    from fcnquant.recover.plan import RecoveryPlan, resolve_plan
    from fcnquant.recover.scale_search import (ScaleSearchOptions, ScaleSearchResult, output_error,
                                               search_activation_scales)


def __getattr__(name: str):
    """Returns the public name ``name``, importing its subpackage on first use."""
    sub = _EXPORTS.get(name)
    if sub is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """This package's module: ``adaround`` and ``equalize`` stay the functions of those names.

    Importing a subpackage binds it on its parent package under its own name, whoever imports it and whenever;
    the functions ``adaround`` and ``equalize`` share their subpackage's name, so the binding is turned into the
    subpackage's function of that name (what these names meant when this package imported everything at once).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in ("adaround", "equalize") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
