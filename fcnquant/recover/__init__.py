"""fcnquant.recover: accuracy recovery for int8: numpy on ONNX graphs, no torch."""
from __future__ import annotations

# AdaRound (helper ada)
from fcnquant.recover.adaround import AdaRoundResult, LayerStats, adaround
