"""Reading a QDQ model's activations at its integer tensors, so exposing them keeps the integer kernels.

To measure drift, the quantized model runs with its paired activations as extra outputs. Those are mostly
DequantizeLinear outputs; exposing one keeps onnxruntime from fusing ``DQ -> Conv -> Q`` into its integer kernel
(QLinearConv), so the whole run falls back to float kernels: the full-size int8 fcn8s at 320 px ran in 307 ms with
its 27 DQ outputs exposed against 166 ms plain. Exposing the QuantizeLinear outputs that feed those DQs instead
(the fused kernels' own outputs) ran in 246 ms. :func:`plan_taps` finds, for each wanted DQ output, the integer
tensor it reads and its constant scale and zero point; :meth:`IntegerTaps.values` hands per-tensor ones on as
:class:`~fcnquant.compare.drift.metrics.QuantizedValues`, which the drift sums dequantize on the fly in their one pass
(dequantizing in numpy first took four passes: 0.37 s per full-size fcn8s image, more than the integer kernels
saved), exactly as the DequantizeLinear does (``float32(int32(q) - int32(zp)) * scale``: the integer difference
and its conversion are exact, and the one float32 product is correctly rounded whatever the implementation), so the
values are the same, bit for bit (tested against the DQ outputs themselves). Per-axis ones are dequantized here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fcnquant.compare.drift.metrics import QuantizedValues

_INTEGER_TYPES = frozenset({"int8", "uint8", "int16", "uint16"})


@dataclass(frozen=True)
class _Dequant:
    source: str  # the integer tensor the DequantizeLinear reads
    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int32
    axis: int | None  # per-axis quantization (None: per-tensor)


@dataclass(frozen=True)
class IntegerTaps:
    """Which tensors to expose for ``names``: integer sources of DQ outputs, the rest as they are."""

    names: tuple[str, ...]  # the wanted tensors
    dequant: dict[str, _Dequant] = field(default_factory=dict)  # wanted DQ output -> how to rebuild it

    @property
    def exposed(self) -> list[str]:
        """Returns the tensors the session must output (each once)."""
        return list(dict.fromkeys(self.dequant[n].source if n in self.dequant else n for n in self.names))

    def values(self, raw: dict[str, np.ndarray]) -> dict[str, "np.ndarray | QuantizedValues"]:
        """Returns {wanted tensor: value} from the session's ``raw`` {exposed tensor: value}: per-tensor DQ outputs
        as QuantizedValues (``DriftAccumulator.update`` takes them as they are), the rest as arrays."""
        out: dict[str, np.ndarray] = {}
        for name in self.names:
            d = self.dequant.get(name)
            if d is None:
                out[name] = raw[name]
                continue
            q = raw[d.source]
            scale, zp = d.scale, d.zero_point
            if d.axis is None and scale.size == 1:  # the drift sums dequantize on the fly
                out[name] = QuantizedValues(q, np.float32(scale.reshape(())), int(zp.reshape(())))
                continue
            if d.axis is not None and scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[d.axis % q.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            out[name] = (q.astype(np.int32) - zp).astype(np.float32) * scale
        return out


def plan_taps(model, names: Sequence[str]) -> IntegerTaps:
    """Returns the IntegerTaps of ``names`` in ``model`` (ModelProto): a name produced by a DequantizeLinear with
    constant scale and zero point (initializers) on an 8/16-bit integer tensor produced by a node is read there."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    dequant: dict[str, _Dequant] = {}
    for name in names:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        src = node.input[0]
        if src in inits or src not in producer or len(node.input) < 2 or node.input[1] not in inits:
            continue
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is not None and zp_name not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        if scale.dtype != np.float32:
            continue
        zp_arr = numpy_helper.to_array(inits[zp_name]) if zp_name else None
        if zp_arr is not None and zp_arr.dtype.name not in _INTEGER_TYPES:
            continue
        if zp_arr is None and producer[src].op_type != "QuantizeLinear":
            continue  # without a zero point the integer type is unknown here: leave it to the DQ
        axis = None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if scale.ndim == 1 and scale.size > 1:
            axis = int(attrs.get("axis", 1))
        zp = (zp_arr if zp_arr is not None else np.zeros(scale.shape, np.int8)).astype(np.int32)
        dequant[name] = _Dequant(src, scale, zp, axis)
    return IntegerTaps(tuple(names), dequant)


def with_exposed_outputs(model, taps: IntegerTaps):
    """Returns a copy of ``model`` whose only outputs are ``taps.exposed``, without the nodes no output needs
    (the isolated rewrite: its DQ outputs become their integer inputs, so each copy's DQ -> op -> Q fuses)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.output[:]
    for name in taps.exposed:
        graph.output.append(onnx.ValueInfoProto(name=name))
    needed = set(taps.exposed)
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {i for n in graph.node for i in n.input}
    kept_inputs = [i for i in graph.input if i.name in used or i.name in needed]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    return out
