"""Add and Concat inputs on the sum's grid, for targets that align them by a rounding shift that is not half to even.

A fixed-point chip adds two int8 tensors of power-of-two scales by bringing them onto one grid and shifting the
exact sum to the output's scale. An input ``k`` bits finer than the output makes that shift round: one sum in
``2**k`` is a tie, and a chip that rounds ties up (``rounding = "half_up"``) shifts its outputs by
``2**-(k+1)`` LSB on average, every Add again: on the demo ResNet-50-D8 (16 residual Adds, branch outputs
1-3 bits finer than the sum) the emulated chip lost 0.78 mIoU against float where onnxruntime's half-to-even
simulation shows 0.45 (1000 held-out images).

An input whose only reader is the Add (or Concat), made by an op that rounds from a wide accumulator anyway
(Conv or ConvTranspose, with its fused Relu, or a linear Resize), can be quantized straight onto the sum's grid:
its own requantization then rounds once from the accumulator (a shift of 6-11 bits, ties rarer by as much), and
the Add no longer rounds that input. The simulation's error stays the same in size (one rounding to the output
grid either way; onnxruntime's mIoU differs by 0.02-0.08 on the demo models), and the chip's rounding bias at the
Add is gone: the emulated r50 scores 70.58 mIoU with it, 70.18 without (float 70.96), fcn8s and fcn16s 0.03-0.04
more (docs/emulation.md).

Only for targets with ``add_concat = "shift"`` and a rounding other than ``half_even``: with ties to even the
shift is unbiased and the chip computes what the simulation computes, so those models are unchanged.
"""
from __future__ import annotations

from typing import Mapping

from fcnquant.graph import consumers

#: metadata key of an emitted model: JSON {input tensor: sum tensor} of the inputs on their sum's grid
METADATA_KEY = "fcnquant.sum_aligned"
#: ops whose output is rounded from a wide integer accumulator on the chip
_ACCUMULATING = frozenset({"Conv", "ConvTranspose"})


def applies(target) -> bool:
    """Returns whether ``target`` (a ``fcnquant.targets.Target``) gets its Add/Concat inputs on the sum's grid."""
    return target is not None and target.add_concat == "shift" and target.rounding != "half_even"


def sum_aligned_inputs(model, params: Mapping[str, tuple[float, int]],
                       inherited: Mapping[str, str]) -> dict[str, str]:
    """Returns {input tensor: the tensor whose scale it takes} for the Add/Concat inputs of ``model`` (the float
    ModelProto) that go onto the sum's grid (module docstring).

    ``params``: {tensor: (scale, zero point)} of every quantized activation (inherited ones included);
    ``inherited``: {tensor: observed tensor whose scale it reuses} (``fcnquant.calibrate.tensors``), which tells
    a Conv fused with its Relu apart. An input qualifies when its only reader is the Add/Concat, it is no graph
    output, its scale is finer than the sum's, and it comes from a Conv/ConvTranspose (directly or through its
    fused Relu) or from a linear Resize.
    """
    graph = model.graph
    readers = consumers(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    outputs = {o.name for o in graph.output}
    moved: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("Add", "Concat"):
            continue
        total = _sum_tensor(node, inherited)
        if total not in params:
            continue
        for name in dict.fromkeys(node.input):
            if (name in params and name not in outputs and len(readers.get(name, ())) == 1
                    and _rounds_from_accumulator(producer.get(name), producer, inherited)
                    and params[name][0] < params[total][0]):
                moved[name] = total
    return moved


def _sum_tensor(node, inherited: Mapping[str, str]) -> str:
    """Returns the tensor holding the Add/Concat's quantized result: its Relu's output when the Relu is fused."""
    out = node.output[0]
    return inherited.get(out, out)


def _rounds_from_accumulator(node, producer, inherited: Mapping[str, str]) -> bool:
    if node is None:
        return False
    if node.op_type in _ACCUMULATING:
        return True
    if node.op_type == "Relu":  # a Conv fused with its Relu: one requantization from the accumulator
        src = producer.get(node.input[0])
        return src is not None and src.op_type in _ACCUMULATING and inherited.get(node.input[0]) == node.output[0]
    if node.op_type == "Resize":
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
        return mode in ("linear", "bilinear")
    return False


def align_sum_inputs(model, params: dict[str, tuple[float, int]], inherited: Mapping[str, str],
                     skip: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """Gives each input :func:`sum_aligned_inputs` finds the sum's (scale, zero point) in ``params`` (in place),
    with every tensor that inherits its scale (a Conv output fused with that Relu); returns the moved inputs.
    Tensors in ``skip`` (e.g. int16 ones) and sums in it are left alone."""
    moved = {k: v for k, v in sum_aligned_inputs(model, params, inherited).items()
             if k not in skip and v not in skip}
    for name, total in moved.items():
        params[name] = params[total]
        for other, src in inherited.items():
            if src == name and other in params:
                params[other] = params[total]
    return moved


def sum_aligned(qmodel) -> dict[str, str]:
    """Returns {input tensor: sum tensor} recorded in an emitted model's metadata (empty when none moved)."""
    import json

    raw = next((p.value for p in qmodel.metadata_props if p.key == METADATA_KEY), "")
    return json.loads(raw) if raw else {}


def share_sum_scales(qmodel, moved: Mapping[str, str]) -> int:
    """Points the QuantizeLinear of each moved tensor in the QDQ ``qmodel`` (and the DequantizeLinear nodes reading
    it) at the sum's scale and zero point initializers, before any Relu is fused away.

    One initializer then holds the scale of the sum and of the inputs on its grid, so a pass that changes it (the
    power-of-two scale search) moves them together, and a Resize output (onnxruntime quantizes it with its
    input's parameters) gets the sum's scale. Initializers nothing reads any more are removed. Returns how many
    tensors now share their sum's scale.
    """
    graph = qmodel.graph
    quantizer = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    readers = consumers(graph)
    shared, detached = 0, set()
    for name, total in moved.items():
        q, q_sum = quantizer.get(name), quantizer.get(total)
        if q is None or q_sum is None:
            continue
        for node in [q] + [d for d in readers.get(q.output[0], ()) if d.op_type == "DequantizeLinear"]:
            detached.update(node.input[1:3])
            node.input[1], node.input[2] = q_sum.input[1], q_sum.input[2]
        shared += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used or t.name not in detached]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return shared
