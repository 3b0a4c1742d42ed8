"""fcnquant.recover: accuracy recovery for int8 (cross-layer equalization, ...): numpy on ONNX graphs, no torch."""
from __future__ import annotations

# cross-layer equalization, high-bias absorption and power-of-two alignment (helper cle)
from fcnquant.recover.align import AlignResult, AlignedSpace, align_pow2
from fcnquant.recover.cle import Consumer, Layout, Pair, Producer, equalization_scales, equalize_chains
from fcnquant.recover.equalize import EqualizeResult, PairRecord, WeightRange, equalize
from fcnquant.recover.scalable import ScalablePair, Skip, find_pairs
