"""Cross-layer equalization, high-bias absorption and power-of-two alignment of a float ONNX model.

Numerics (numpy only): ``cle`` (scales, equalization of chains, absorption), ``pow2_grid`` (grid waste, best
rescale), ``channel_stats``. Graph rules: ``scalable`` (which channel spaces can be rescaled). Image passes:
``bounds`` (absorption's per-channel bounds), ``check`` (the output difference after equalizing). Drivers:
:func:`equalize` (``equalize``), :func:`align_pow2` (``align``).
"""
from __future__ import annotations

from fcnquant.recover.equalize.align import AlignedSpace, AlignResult, align_pow2
from fcnquant.recover.equalize.cle import Consumer, Layout, Pair, Producer, equalization_scales, equalize_chains
from fcnquant.recover.equalize.equalize import (BOUND_RULES, METADATA_KEY, EqualizeOptions, EqualizeResult,
                                                PairRecord, WeightRange, equalize)
from fcnquant.recover.equalize.scalable import ScalablePair, Skip, find_pairs

__all__ = ["BOUND_RULES", "METADATA_KEY", "AlignResult", "AlignedSpace", "Consumer", "EqualizeOptions",
           "EqualizeResult", "Layout", "Pair", "PairRecord", "Producer", "ScalablePair", "Skip", "WeightRange",
           "align_pow2", "equalization_scales", "equalize", "equalize_chains", "find_pairs"]
