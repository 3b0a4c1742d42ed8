"""The searchable activation scales of an emitted npu-pow2 QDQ model, and the model with them as graph inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fcnquant.calibrate.qparams import pow2_ceil
from fcnquant.errors import FcnquantError, ModelError


@dataclass(frozen=True)
class ScaleGroup:
    """One activation scale of the QDQ model: its initializer, the tensors it quantizes, the table entries that
    set it, its candidate scales (coarse first) and the index of the one the model has."""

    init: str
    tensors: tuple[str, ...]
    entries: tuple[str, ...]
    candidates: tuple[float, ...]
    initial: int


def scale_groups(qmodel, table, inherited: dict[str, str] | None = None, extra: int = 0) -> list[ScaleGroup]:
    """Returns the searchable activation scales of the QDQ ``qmodel`` emitted from ``table`` (npu-pow2), in
    graph order.

    A group is a scalar scale initializer read by ``QuantizeLinear`` nodes of activations (not weights); its
    entries are the table tensors that set it: the tensor itself, or for an inherited one its source
    (``inherited``: ``fcnquant.calibrate.tensors.inherited_scales`` of the float model; None: none), and for an
    Add/Concat input emitted on its sum's grid (``fcnquant.quantize.align``, recorded in the model) the sum.
    ``extra`` adds that many powers of two beyond each neighbour (``extra=1``: ``2 s_up`` and ``s_up / 4`` too).
    Groups whose scale is not one of the candidates (e.g. clamped to the minimum scale) are left out.
    """
    from onnx import numpy_helper

    t = table.resolved_target
    if not t.pow2:
        raise FcnquantError(f"the scale search is for power-of-two targets; the table is for {table.target}")
    from fcnquant.quantize.align import sum_aligned

    inits = {i.name: i for i in qmodel.graph.initializer}
    inherited = dict(inherited or {}) | sum_aligned(qmodel)  # an input on its sum's grid shares the sum's scale
    order: list[str] = []
    tensors: dict[str, list[str]] = {}
    for node in qmodel.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        if numpy_helper.to_array(inits[node.input[1]]).size != 1:
            continue
        if node.input[1] not in tensors:
            order.append(node.input[1])
        tensors.setdefault(node.input[1], []).append(node.input[0])
    groups = []
    for init in order:
        names = tensors[init]
        entries = tuple(dict.fromkeys(_source(n, inherited) for n in names if _source(n, inherited) in table.tensors))
        if not entries:
            continue
        e = table.tensors[entries[0]]
        amax = max(abs(e.lo), abs(e.hi))
        if not amax > 0:
            continue
        up = pow2_ceil(amax / t.qmax)
        cands = tuple(up * 2.0 ** k for k in range(extra, -2 - extra, -1))
        now = float(numpy_helper.to_array(inits[init]).reshape(()))
        if now not in cands or any(float(table.tensors[x].scale) != now for x in entries):
            continue
        groups.append(ScaleGroup(init, tuple(names), entries, cands, cands.index(now)))
    return groups


def _source(name: str, inherited: dict[str, str]) -> str:
    seen = set()
    while name in inherited and name not in seen:
        seen.add(name)
        name = inherited[name]
    return name


def with_scale_inputs(qmodel, inits: Sequence[str]):
    """Returns a copy of ``qmodel`` whose scalar initializers ``inits`` are float graph inputs instead."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    wanted = set(inits)
    kept = [i for i in m.graph.initializer if i.name not in wanted]
    found = {i.name for i in m.graph.initializer} & wanted
    if found != wanted:
        raise ModelError(f"no initializer {sorted(wanted - found)[:3]} in the model")
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    for name in inits:
        m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
    return m
