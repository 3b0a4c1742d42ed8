"""AdaRound (Nagel et al. 2020) on ONNX models, numpy only: the rounding arithmetic (``rounding``), one layer's
optimisation on its moments (``layer_rounding``), conv patches and their moments (``conv_patches``), the graph
side (``layers``), the image pass (``moments``) and the driver (:func:`adaround`)."""
from __future__ import annotations

from fcnquant.recover.adaround.adaround import (ADAROUND_KEY, CALIBRATED_SHA_KEY, DEFAULT_ITERATIONS, INPUT_MODES,
                                                AdaRoundOptions, AdaRoundResult, LayerStats, adaround)
from fcnquant.recover.adaround.moments import moments_shard

__all__ = ["ADAROUND_KEY", "CALIBRATED_SHA_KEY", "DEFAULT_ITERATIONS", "INPUT_MODES", "AdaRoundOptions",
           "AdaRoundResult", "LayerStats", "adaround", "moments_shard"]
