"""Pairing the activations of a float model with those of its quantized (QDQ int8 or fp16) version.

Two sources, combined:

1. **The tensor map** that fcnquant's quantizer stores in ``metadata_props["fcnquant.tensor_map"]``
   ({float tensor: the DequantizeLinear output standing for it}). Its entries are taken as they are.
2. **Graph structure**, for every model (and for tensors the map does not list). Nodes are matched, never names:

   a. Q, DQ, Identity and float-to-float Cast nodes are *transparent*: an input is traced back through them to
      the tensor a compute node produced (its *head*). Weights behind a DequantizeLinear are constants.
   b. Graph inputs are matched by name, the rest by position.
   c. Float compute nodes are visited in topological order. A node matches the unmatched quantized node with the
      same op type whose inputs are, slot by slot, the heads matched to its own inputs; constant inputs match
      constants and integer inputs (shape arithmetic, folded or not) match integer inputs. Among several
      candidates the one with the same node name wins, else the first in topological order.
   d. A float ``Relu`` or ``Clip`` without a match is *folded*: onnxruntime's QDQ quantizer deletes a Relu after
      a Conv and lets the QuantizeLinear's range clip instead, so the Relu's output shares the head of its input.
   e. Each float activation ``T`` pairs with the head ``X`` of its matched node's output, seen through the chain
      of transparent nodes that follows ``X`` (preferring the QuantizeLinear branch): the tensor at the end of
      that chain is what the quantized model's consumers read. When a fold makes several float tensors share a
      head, the last one (the Relu output) gets the chain and the earlier ones the raw head.

A pair is *quantized* when its chain holds a QuantizeLinear or its values pass through float16/bfloat16. Float
activations without a counterpart and quantized-model activations nobody claims are listed, not dropped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fcnquant.compare.tensors.graph import LOW_PRECISION_FLOATS, GraphIndex, index_graph
from fcnquant.errors import ModelError

log = logging.getLogger(__name__)

TENSOR_MAP_KEY = "fcnquant.tensor_map"
FOLDABLE = frozenset({"Relu", "Clip"})
INPUT_OP = "Input"


@dataclass(frozen=True)
class TensorPair:
    """One float activation and the quantized model's tensor that stands for it."""

    float_name: str
    quant_name: str  # what the quantized model's consumers read: the end of the Q/DQ/Cast chain after ``head``
    head: str  # produced by the counterpart node (or a graph input), before any Q/DQ/Cast
    chain: tuple[str, ...]  # outputs of the transparent nodes from ``head`` to ``quant_name``, in order
    op_type: str  # the float op producing ``float_name`` ("Input" for a graph input)
    order: int  # position among the float model's activations in topological order
    quantized: bool
    source: str  # "tensor_map" or "structure"


@dataclass(frozen=True)
class Pairing:
    """All pairs (float topological order), the unpaired tensors of each model, and where pairs came from."""

    pairs: tuple[TensorPair, ...]
    unpaired_float: tuple[str, ...]
    unpaired_quant: tuple[str, ...]
    source: str  # "tensor_map" when the quantized model carried fcnquant's map, else "structure"

    @property
    def measured(self) -> tuple[TensorPair, ...]:
        """Returns the quantized pairs: the tensors whose drift is measured."""
        return tuple(p for p in self.pairs if p.quantized)

    @property
    def unquantized(self) -> tuple[str, ...]:
        """Returns the float tensors paired with a tensor the quantized model does not quantize."""
        return tuple(p.float_name for p in self.pairs if not p.quantized)


def read_tensor_map(model) -> dict[str, str] | None:
    """Returns the model's ``fcnquant.tensor_map`` metadata, or None when absent; ModelError when malformed."""
    for prop in model.metadata_props:
        if prop.key == TENSOR_MAP_KEY:
            try:
                mapping = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise ModelError(f"metadata '{TENSOR_MAP_KEY}' is not valid JSON: {exc}") from exc
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise ModelError(f"metadata '{TENSOR_MAP_KEY}' must be a JSON object of tensor names")
            return mapping
    return None


def pair_tensors(float_model, quant_model, *, use_map: bool = True) -> Pairing:
    """Returns the Pairing of a float ``onnx.ModelProto`` with its quantized version (rules in the module docstring)."""
    fg = index_graph(float_model)
    qg = index_graph(quant_model)
    activations = _float_activations(fg)
    f2q, unmatched = _match_nodes(fg, qg)
    structural = _structural_pairs(fg, qg, activations, f2q)

    tensor_map = read_tensor_map(quant_model) if use_map else None
    pairs: dict[str, TensorPair] = {}
    source = "structure"
    if tensor_map is not None:
        source = "tensor_map"
        order = {name: k for k, name in enumerate(activations)}
        q_tensors = qg.tensors()
        for fname, qname in tensor_map.items():
            if fname not in order:
                log.warning("tensor map names '%s', which is not an activation of the float model", fname)
                continue
            if qname not in q_tensors:
                log.warning("tensor map pairs '%s' with '%s', which the quantized model does not have", fname, qname)
                continue
            head, chain = _trace_back(qg, qname)
            op = fg.node_of(fname).op_type if fg.node_of(fname) is not None else INPUT_OP
            pairs[fname] = TensorPair(fname, qname, head, chain, op, order[fname], True, "tensor_map")
        claimed = {p.quant_name for p in pairs.values()}
        for p in structural:
            if p.float_name not in pairs and p.quant_name not in claimed:
                pairs[p.float_name] = p
    else:
        pairs = {p.float_name: p for p in structural}

    ordered = tuple(sorted(pairs.values(), key=lambda p: p.order))
    unpaired_float = tuple(n for n in activations if n not in pairs)
    heads = {p.head for p in ordered} | {p.quant_name for p in ordered}
    unpaired_quant = tuple(n for n in _quant_heads(qg) if n not in heads)
    if unmatched:
        log.info("%d float nodes have no counterpart in the quantized model (first: %s)", len(unmatched),
                 ", ".join(unmatched[:3]))
    return Pairing(pairs=ordered, unpaired_float=unpaired_float, unpaired_quant=unpaired_quant, source=source)


def _float_activations(g: GraphIndex) -> list[str]:
    """Returns the float graph's floating-point activations in topological order (inputs, then node outputs)."""
    names = [n for n in g.inputs if g.is_float(n)]
    for node in g.nodes:
        if g.is_transparent(node):
            continue
        names += [o for o in node.output if o and o not in g.constant and g.is_float(o)]
    return names


def _quant_heads(g: GraphIndex) -> list[str]:
    """Returns the floating-point outputs of the quantized graph's compute (non-transparent, non-constant) nodes."""
    out: list[str] = []
    for node in g.nodes:
        if g.is_transparent(node):
            continue
        out += [o for o in node.output if o and o not in g.constant and g.is_float(o)]
    return out


def _resolve(g: GraphIndex, name: str) -> str:
    """Returns the head of ``name``: traced back through transparent nodes to a compute output or graph input."""
    seen = 0
    while True:
        node = g.node_of(name)
        if node is None or not g.is_transparent(node):
            return name
        name = node.input[0]
        seen += 1
        if seen > len(g.nodes):  # a cycle would be a malformed graph; index_graph already rejects those
            raise ModelError(f"cannot trace tensor '{name}' back through Q/DQ/Cast nodes")


def _trace_back(g: GraphIndex, name: str) -> tuple[str, tuple[str, ...]]:
    """Returns (head, chain) for a tensor of the quantized graph: its head and the transparent outputs leading to it."""
    chain: list[str] = []
    while True:
        node = g.node_of(name)
        if node is None or not g.is_transparent(node):
            return name, tuple(reversed(chain))
        chain.append(name)
        name = node.input[0]


def _follow(g: GraphIndex, head: str) -> tuple[str, tuple[str, ...]]:
    """Returns (end, chain): the tensor reached from ``head`` through transparent readers (Q branch first)."""
    chain: list[str] = []
    name = head
    while len(chain) <= len(g.nodes):
        nxt = [n for n in g.readers(name) if g.is_transparent(n) and n.input[0] == name]
        if not nxt:
            break
        node = next((n for n in nxt if n.op_type == "QuantizeLinear"), nxt[0])
        name = node.output[0]
        chain.append(name)
    return name, tuple(chain)


def _slot_key(g: GraphIndex, name: str, mapped: dict[str, str] | None):
    """Returns how one input slot takes part in a node's matching key (see rule c)."""
    if not name:
        return ("empty",)
    if not g.is_float(name):
        return ("int",)
    if name in g.constant:
        return ("const",)
    head = _resolve(g, name)
    if head in g.constant:
        return ("const",)
    if mapped is None:
        return ("act", head)
    return ("act", mapped[head]) if head in mapped else None


def _node_key(g: GraphIndex, node, mapped: dict[str, str] | None):
    slots = []
    for name in node.input:
        k = _slot_key(g, name, mapped)
        if k is None:
            return None
        slots.append(k)
    while slots and slots[-1] == ("empty",):
        slots.pop()
    return (node.domain or "", node.op_type, tuple(slots))


def _is_compute(g: GraphIndex, node) -> bool:
    return not g.is_transparent(node) and any(o and o not in g.constant for o in node.output)


def _match_nodes(fg: GraphIndex, qg: GraphIndex) -> tuple[dict[str, str], list[str]]:
    """Returns ({float head: quantized head} for matched tensors, names of unmatched float nodes)."""
    f2q: dict[str, str] = {}
    q_inputs = list(qg.inputs)
    for pos, name in enumerate(fg.inputs):
        if name in qg.inputs:
            f2q[name] = name
        elif pos < len(q_inputs) and q_inputs[pos] not in fg.inputs:
            f2q[name] = q_inputs[pos]

    candidates: dict[tuple, list[int]] = {}
    for pos, node in enumerate(qg.nodes):
        if _is_compute(qg, node):
            key = _node_key(qg, node, None)
            if key is not None:
                candidates.setdefault(key, []).append(pos)
    used: set[int] = set()
    unmatched: list[str] = []
    for node in fg.nodes:
        if not _is_compute(fg, node):
            continue
        key = _node_key(fg, node, f2q)
        options = [p for p in candidates.get(key, []) if p not in used] if key is not None else []
        if options:
            pos = next((p for p in options if node.name and qg.nodes[p].name == node.name), options[0])
            used.add(pos)
            qnode = qg.nodes[pos]
            for slot, out in enumerate(node.output):
                if out and slot < len(qnode.output) and qnode.output[slot]:
                    f2q[out] = qnode.output[slot]
            continue
        acts = [_resolve(fg, n) for n in node.input if n and fg.is_float(n) and n not in fg.constant]
        acts = [a for a in acts if a not in fg.constant]
        if node.op_type in FOLDABLE and len(acts) == 1 and acts[0] in f2q:
            f2q[node.output[0]] = f2q[acts[0]]
            continue
        unmatched.append(node.name or f"{node.op_type}->{node.output[0]}")
    return f2q, unmatched


def _structural_pairs(fg: GraphIndex, qg: GraphIndex, activations: list[str], f2q: dict[str, str]) -> list[TensorPair]:
    """Returns the pairs rule e derives from the node matching (float topological order)."""
    by_head: dict[str, list[int]] = {}
    for k, name in enumerate(activations):
        if name in f2q:
            by_head.setdefault(f2q[name], []).append(k)
    pairs: list[TensorPair] = []
    for head, members in by_head.items():
        end, chain = _follow(qg, head)
        last = max(members)
        for k in members:
            fname = activations[k]
            node = fg.node_of(fname)
            op = node.op_type if node is not None else INPUT_OP
            if k == last:
                quant_name, ch = end, chain
            else:
                quant_name, ch = head, ()
            pairs.append(TensorPair(fname, quant_name, head, ch, op, k, _is_quantized(qg, head, ch), "structure"))
    pairs.sort(key=lambda p: p.order)
    return pairs


def _is_quantized(g: GraphIndex, head: str, chain: tuple[str, ...]) -> bool:
    if any(g.node_of(t) is not None and g.node_of(t).op_type == "QuantizeLinear" for t in chain):
        return True
    return any(g.types.get(t) in LOW_PRECISION_FLOATS for t in (head, *chain))
