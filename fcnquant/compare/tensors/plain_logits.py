"""The logits of a model that exposes intermediate tensors, computed as the model without them computes them.

Exposing a tensor as a graph output changes which nodes onnxruntime fuses. Most exposures leave the arithmetic as it
was (a Relu output is the fused Conv+Relu kernel's own output; a MaxPool, Resize or Add output is its node's
output), but exposing the output of a Conv (or ConvTranspose, Gemm, MatMul) that an Add, Sum, Mul, Sub, Div or
BatchNormalization reads keeps onnxruntime from folding the two into one kernel, which adds or scales in another
order: the full-size fcn8s exposing its two skip-score Convs (each read by an Add) gives logits up to ~4e-6 away
from the plain model's, while exposing any of its other 24 paired activations alone leaves them bit for bit.

:func:`plain_logits` appends to the exposing model a copy of the nodes on the way from such *fusion-blocking*
producers to the first graph output, outputs renamed and not exposed, so onnxruntime fuses the copy as it fuses the
model without exposures; the copy reads the original graph's tensors everywhere else. The original nodes, and so
every exposed tensor, stay as they were. A copied node that reads no copied tensor (a fusion-blocking producer
itself) reads copies of its initializers, so that common-subexpression elimination does not merge it back into its
original. Whether the copy's output equals the plain model's logits is onnxruntime's business: the caller checks it
(:mod:`fcnquant.compare.joint` compares one image bit for bit before relying on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: producers whose fusion with a reader an exposure blocks, and the readers onnxruntime folds into them
FUSING_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FOLDING_READERS = frozenset({"Add", "Sum", "Mul", "Sub", "Div", "BatchNormalization"})

#: the share of the model's Conv/Gemm/MatMul weights a copy may hold at most (beyond it, running the plain model
#: instead costs less)
MAX_COPIED_SHARE = 0.25

_SUFFIX = "/plain_logits"


@dataclass(frozen=True)
class PlainLogits:
    """``model`` (a ModelProto: the given one, or a copy with the appended nodes) and ``output``, the tensor holding
    its logits as the model without exposures computes them; ``copied``: how many nodes were copied."""

    model: object
    output: str
    copied: int


def plain_logits(model, exposed: Sequence[str], max_share: float = MAX_COPIED_SHARE) -> PlainLogits | None:
    """Returns the PlainLogits of ``model`` (ModelProto) exposing ``exposed``, or None when the copy would hold
    more than ``max_share`` of its Conv/Gemm/MatMul weight values (rules in the module docstring).

    ``model`` itself is returned, with its first output, when no exposed tensor blocks a fusion.
    """
    import onnx

    graph = model.graph
    nodes = list(graph.node)
    producer = {t: k for k, n in enumerate(nodes) for t in n.output if t}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for t in n.input:
            readers.setdefault(t, []).append(k)
    logits = graph.output[0].name
    blocking = [producer[t] for t in dict.fromkeys(exposed) if t in producer and t != logits
                and nodes[producer[t]].op_type in FUSING_PRODUCERS
                and any(nodes[r].op_type in FOLDING_READERS for r in readers.get(t, ()))]
    if not blocking:
        return PlainLogits(model, logits, 0)
    copied = sorted(_downstream(nodes, readers, blocking) & _upstream(nodes, producer, logits))
    if logits not in producer or not copied:
        return PlainLogits(model, logits, 0)
    sizes = {t.name: _size(t) for t in graph.initializer}
    if _weights(nodes, copied, sizes) > max_share * max(_weights(nodes, range(len(nodes)), sizes), 1):
        return None
    taken = {t for n in nodes for t in (*n.input, *n.output)} | set(sizes) | {i.name for i in graph.input}

    def fresh(name: str) -> str:
        new, k = name + _SUFFIX, 1
        while new in taken:
            k += 1
            new = f"{name}{_SUFFIX}{k}"
        taken.add(new)
        return new

    renamed = {t: fresh(t) for k in copied for t in nodes[k].output if t}
    inits = {t.name: t for t in graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k in copied:
        node = onnx.NodeProto()
        node.CopyFrom(nodes[k])
        own = not any(t in renamed for t in node.input)  # reads only original tensors: keep CSE from merging it
        for slot, t in enumerate(node.input):
            if t in renamed:
                node.input[slot] = renamed[t]
            elif own and t in inits:
                copy = out.graph.initializer.add()
                copy.CopyFrom(inits[t])
                copy.name = node.input[slot] = fresh(t)
        for slot, t in enumerate(node.output):
            if t:
                node.output[slot] = renamed[t]
        if node.name:
            node.name = fresh(node.name)
        out.graph.node.append(node)
    out.graph.output.append(onnx.ValueInfoProto(name=renamed[logits]))
    return PlainLogits(out, renamed[logits], len(copied))


def _downstream(nodes, readers: dict[str, list[int]], start: list[int]) -> set[int]:
    """Returns the positions of the nodes ``start`` and of every node reading, directly or not, their outputs."""
    seen: set[int] = set()
    todo = list(start)
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(r for t in nodes[k].output if t for r in readers.get(t, ()))
    return seen


def _upstream(nodes, producer: dict[str, int], tensor: str) -> set[int]:
    """Returns the positions of the nodes ``tensor`` depends on (its producer included)."""
    seen: set[int] = set()
    todo = [producer[tensor]] if tensor in producer else []
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(producer[t] for t in nodes[k].input if t in producer)
    return seen


def _size(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _weights(nodes, positions, sizes: dict[str, int]) -> int:
    """Returns the weight values (second input, an initializer) of the Conv/Gemm/MatMul nodes at ``positions``."""
    return sum(sizes.get(nodes[k].input[1], 0) for k in positions
               if nodes[k].op_type in FUSING_PRODUCERS and len(nodes[k].input) > 1)
