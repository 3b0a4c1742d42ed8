"""fcnquant.recover: accuracy recovery for int8 (cross-layer equalization, ...): numpy on ONNX graphs, no torch."""
from __future__ import annotations

# cross-layer equalization and high-bias absorption (helper cle)
from fcnquant.recover.cle import Consumer, Layout, Pair, equalization_scales, equalize_chains
from fcnquant.recover.equalize import EqualizeResult, PairRecord, WeightRange, equalize
from fcnquant.recover.scalable import ScalablePair, Skip, find_pairs
