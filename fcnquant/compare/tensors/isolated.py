"""Graph rewrite for the *isolated* pass: every quantized layer fed the float model's values, in one run.

For each measured pair (float tensor ``T``, head ``X`` in the quantized model, chain ``X -> Q -> DQ`` or
``X -> Cast``) the rewrite:

1. cuts ``X`` when a node produces it: a new graph input ``I_X`` (``X``'s type and shape) replaces ``X`` in every
   node reading it, and is fed with the float model's ``T`` (cast to ``X``'s type: float16 in an fp16 model). The
   quantization of ``X`` itself (its Q/DQ or Cast chain) now applies to the float value;
2. duplicates ``X``'s chain on the original ``X``: the copy's output is the isolated value of ``T``, the layer's
   own quantization (its quantized inputs and weights, and its output's Q/DQ or Cast) applied to float inputs.
   With an empty chain (fp16 graphs) the isolated value is ``X`` itself. A pair whose head is a graph input (the
   image) needs no cut: its isolated value equals its accumulated one;
3. makes those isolated values the only graph outputs and drops the nodes no output needs.

One run of the rewritten model with the float activations as inputs gives every layer's isolated output.
When ``T`` was folded into its producer (onnxruntime deletes a Relu and lets the QuantizeLinear clip), ``X`` is
the producer's output and is fed the Relu's output ``T``: the chain's QuantizeLinear clips both to the same values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fcnquant.compare.tensors.graph import index_graph
from fcnquant.compare.tensors.pairing import TensorPair
from fcnquant.errors import ModelError

_NUMPY_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class IsolatedPlan:
    """The rewritten model and how to drive it."""

    model: object  # onnx.ModelProto
    feeds: dict[str, tuple[str, np.dtype]]  # new graph input -> (float tensor feeding it, numpy dtype)
    outputs: dict[str, str]  # float tensor of a pair -> rewritten model's output holding its isolated value


def build_isolated(quant_model, pairs: Sequence[TensorPair]) -> IsolatedPlan:
    """Returns the IsolatedPlan for ``pairs`` (measured pairs of ``quant_model``), rules in the module docstring."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(quant_model)
    g = index_graph(model)
    graph = model.graph
    taken = g.tensors() | {o for n in graph.node for o in n.output}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    cut_input: dict[str, str] = {}  # head -> new graph input
    feeds: dict[str, tuple[str, np.dtype]] = {}
    for p in pairs:
        if p.head in cut_input or g.node_of(p.head) is None:
            continue
        info = g.infos.get(p.head)
        elem = info.type.tensor_type.elem_type if info is not None else g.types.get(p.head, 1)
        if elem not in _NUMPY_TYPES:
            raise ModelError(f"cannot feed tensor '{p.head}' of ONNX type {elem} in the isolated pass")
        name = fresh(f"{p.head}::float")
        vi = onnx.ValueInfoProto()
        if info is not None:
            vi.CopyFrom(info)
        else:
            vi.type.tensor_type.elem_type = elem
        vi.name = name
        graph.input.append(vi)
        cut_input[p.head] = name
        feeds[name] = (p.float_name, np.dtype(_NUMPY_TYPES[elem]))

    for node in g.nodes:  # the same NodeProto objects as graph.node, in topological order
        for slot, name in enumerate(node.input):
            if name in cut_input:
                node.input[slot] = cut_input[name]

    producers = {o: node for node in g.nodes for o in node.output if o}
    extra: dict[int, list] = {}  # position in g.nodes -> duplicated nodes to insert after it
    position = {id(node): k for k, node in enumerate(g.nodes)}
    outputs: dict[str, str] = {}
    typed_as: dict[str, str] = {}  # duplicated tensor -> original whose inferred type and shape it shares
    for p in pairs:
        if p.head not in cut_input:
            outputs[p.float_name] = p.quant_name
            continue
        current = p.head
        for tensor in p.chain:
            original = producers[tensor]
            dup = onnx.NodeProto()
            dup.CopyFrom(original)
            dup.name = fresh(f"{original.name or original.op_type}::isolated")
            dup.input[0] = current
            del dup.output[:]
            current = fresh(f"{tensor}::isolated")
            dup.output.append(current)
            typed_as[current] = tensor
            for extra_out in original.output[1:]:
                if extra_out:
                    dup.output.append(fresh(f"{extra_out}::isolated"))
            extra.setdefault(position[id(original)], []).append(dup)
        outputs[p.float_name] = current

    nodes = []
    for k, node in enumerate(g.nodes):
        nodes.append(node)
        nodes.extend(extra.get(k, []))
    wanted = list(dict.fromkeys(outputs.values()))
    kept = []
    for node in _needed(nodes, set(wanted)):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        kept.append(copy)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    for name in wanted:
        info = g.infos.get(typed_as.get(name, name))
        vi = onnx.ValueInfoProto()
        if info is not None:
            vi.CopyFrom(info)
        vi.name = name
        graph.output.append(vi)
    used = {n for node in kept for n in node.input} | set(wanted)
    live_inputs = [vi for vi in graph.input if vi.name in used]
    del graph.input[:]
    graph.input.extend(live_inputs)
    feeds = {k: v for k, v in feeds.items() if k in used}
    live_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)
    return IsolatedPlan(model=model, feeds=feeds, outputs=outputs)


def _needed(nodes: list, wanted: set[str]) -> list:
    """Returns the nodes (in the given order) that some tensor in ``wanted`` depends on."""
    need = set(wanted)
    keep = [False] * len(nodes)
    for k in range(len(nodes) - 1, -1, -1):
        if any(o in need for o in nodes[k].output):
            keep[k] = True
            need.update(n for n in nodes[k].input if n)
            for attr in nodes[k].attribute:  # subgraphs may read outer-scope tensors
                if attr.g.node:
                    need.update(n for sub in attr.g.node for n in sub.input if n)
    return [node for node, k in zip(nodes, keep) if k]
