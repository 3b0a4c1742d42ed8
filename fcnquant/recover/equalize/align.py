"""Power-of-two alignment of activation ranges (npu-pow2): one exact positive rescale per channel space.

On a power-of-two target an activation with calibrated threshold T gets ``scale = 2**ceil(log2(T / 127))``, so up
to half of its int8 grid goes unused (1 bit; ~0.5 on average). Every channel space that cross-layer equalization
can rescale (:func:`~fcnquant.recover.equalize.scalable.find_pairs`) can also be divided by one scalar a > 0 with
the same exact compensation in its consumers; its activations' thresholds then become T / a. :func:`align_pow2`
picks a per space (:func:`~fcnquant.recover.equalize.pow2_grid.best_alignment`) so that the space's activations
sit just below a grid edge, and returns the model with the thresholds to use for the rescaled tensors (T / a: the
model computes exactly the old tensor divided by a, so no new calibration pass is needed).

Spaces whose channels also reach a calibrated tensor behind a Concat are left alone (that tensor would be rescaled
only in part), and named. Run it after :func:`~fcnquant.recover.equalize.equalize` and calibration, before emission.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fcnquant import __version__
from fcnquant.errors import ModelError
from fcnquant.recover.equalize import cle
from fcnquant.recover.equalize.pow2_grid import DEFAULT_MARGIN, best_alignment
from fcnquant.recover.equalize.scalable import Skip, find_pairs

log = logging.getLogger(__name__)

METADATA_KEY = "fcnquant.pow2_aligned"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AlignedSpace:
    """One rescaled channel space: its producers, the factor a (tensors divided by it) and the waste in bits."""

    producer: str
    producers: tuple[str, ...]
    factor: float
    tensors: tuple[str, ...]
    waste_before: float
    waste_after: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as plain JSON types."""
        return {"producer": self.producer, "producers": list(self.producers), "factor": self.factor,
                "tensors": list(self.tensors), "waste_before": self.waste_before, "waste_after": self.waste_after}


@dataclass(frozen=True)
class AlignResult:
    """The aligned model, the spaces rescaled, those left alone, and the new thresholds of the rescaled tensors."""

    model: Any = field(repr=False)
    spaces: tuple[AlignedSpace, ...]
    skipped: tuple[Skip, ...]
    thresholds: dict[str, float]

    def waste(self) -> tuple[float, float]:
        """Returns the total waste in bits (before, after) over the calibrated tensors of the rescaled spaces."""
        return sum(s.waste_before for s in self.spaces), sum(s.waste_after for s in self.spaces)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result (without the model) as plain JSON types."""
        before, after = self.waste()
        return {"format_version": FORMAT_VERSION, "fcnquant_version": __version__,
                "spaces": [s.to_dict() for s in self.spaces], "skipped": [s.to_dict() for s in self.skipped],
                "thresholds": dict(self.thresholds), "waste_bits": {"before": before, "after": after}}


def align_pow2(
    model,
    thresholds: Mapping[str, float],
    *,
    qmax: int = 127,
    margin: float = DEFAULT_MARGIN,
) -> AlignResult:
    """Returns the AlignResult of rescaling ``model``'s channel spaces onto power-of-two grids.

    ``thresholds`` maps activation tensors to their calibrated max |x| (e.g. ``max(|lo|, |hi|)`` of a calibration
    table's entries). ``model`` is an ``onnx.ModelProto`` (not modified). The result's ``thresholds`` hold T / a for
    every tensor of a rescaled space; all other tensors are unchanged.
    """
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    pairs, _ = find_pairs(work)
    inits = {t.name: t for t in work.graph.initializer}
    spaces: list[AlignedSpace] = []
    skipped: list[Skip] = []
    new_thresholds: dict[str, float] = {}
    for p in pairs:
        observed = [t for t in p.tensors if t in thresholds and thresholds[t] > 0]
        if not observed:
            continue
        partial = [t for t in p.partial_tensors if t in thresholds]
        if partial:
            skipped.append(Skip(p.producer, f"its channels also reach '{partial[0]}' behind a Concat, whose "
                                            "threshold would change only in part"))
            continue
        a, before, after = best_alignment([float(thresholds[t]) for t in observed], qmax, margin)
        if a == 1.0:
            continue
        spec = cle.Pair(
            p.producer,
            tuple(cle.Producer(q.weight, q.bias, cle.Layout(q.transposed, q.group)) for q in p.producers),
            tuple(cle.Consumer(c.weight, cle.Layout(c.transposed, c.group), c.offset) for c in p.consumers),
        )
        keys = {q.weight for q in spec.producers} | {q.bias for q in spec.producers if q.bias} | {
            c.weight for c in spec.consumers}
        arrays = {k: numpy_helper.to_array(inits[k]) for k in keys}
        for name, arr in cle.apply_scales(arrays, spec, np.full(p.channels, a)).items():
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
        for t in observed:
            new_thresholds[t] = float(thresholds[t]) / a
        spaces.append(AlignedSpace(p.producer, tuple(q.node for q in p.producers), a, tuple(observed), before, after))
    for s in skipped:
        log.info("not aligned: %s: %s", s.node, s.reason)
    result = AlignResult(work, tuple(spaces), tuple(skipped), new_thresholds)
    before, after = result.waste()
    log.info("aligned %d channel space(s) to power-of-two grids: %.2f -> %.2f bits unused", len(spaces), before, after)
    summary = {"format_version": FORMAT_VERSION, "margin": margin,
               "spaces": [{"producer": s.producer, "factor": s.factor} for s in spaces],
               "waste_bits": {"before": round(before, 4), "after": round(after, 4)}}
    keep = [(q.key, q.value) for q in work.metadata_props if q.key != METADATA_KEY]
    del work.metadata_props[:]
    for key, value in keep + [(METADATA_KEY, json.dumps(summary, sort_keys=True))]:
        prop = work.metadata_props.add()
        prop.key, prop.value = key, value
    return result
