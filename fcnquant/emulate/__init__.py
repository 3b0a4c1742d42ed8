"""A bit-exact integer emulator of a fixed-point target's arithmetic (docs/emulation.md).

``build_program`` parses a QDQ model into integer steps once; ``run_program`` runs them on an image batch with a
target's :class:`Arithmetic` (rounding, accumulator width); ``emulate_eval`` scores the emulated model on a split
and measures its disagreement with onnxruntime's simulation, a shard function run by the executor it is given.
"""
from __future__ import annotations

from fcnquant.emulate.interpret import Emulated, run_program
from fcnquant.emulate.measure import EmulationReport, emulate_eval
from fcnquant.emulate.program import IntProgram, QTensor, Step, build_program
from fcnquant.emulate.target import Arithmetic, arithmetic_of, model_target

__all__ = ["Arithmetic", "Emulated", "EmulationReport", "emulate_eval", "IntProgram", "QTensor", "Step", "arithmetic_of", "build_program",
           "model_target", "run_program"]
