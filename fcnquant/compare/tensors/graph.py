"""A read-only index of an ONNX graph for the compare passes: topological order, producers, consumers, constants, types.

Only the top-level graph is indexed (If/Loop bodies are opaque nodes). A tensor is *constant* when it is an
initializer, the output of a ``Constant`` node, or the output of a node whose inputs are all constant (a
``DequantizeLinear`` of int8 weights, shape arithmetic on constants). Everything else is an activation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fcnquant.graph import inferred_value_infos, topological_order

FLOAT = 1
FLOAT16 = 10
DOUBLE = 11
BFLOAT16 = 16
FLOAT_TYPES = frozenset({FLOAT, FLOAT16, DOUBLE, BFLOAT16})
LOW_PRECISION_FLOATS = frozenset({FLOAT16, BFLOAT16})
# Ops that only carry a tensor through quantization or a float-to-float type change.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass
class GraphIndex:
    """Lookup tables over one ``onnx.GraphProto`` (built by ``index_graph``)."""

    nodes: list  # NodeProto, topologically sorted
    inputs: list[str]  # graph inputs that are not initializers, in order
    outputs: list[str]
    producer: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (node position, output slot)
    consumers: dict[str, list[int]] = field(default_factory=dict)  # tensor -> node positions reading it
    constant: set[str] = field(default_factory=set)
    types: dict[str, int] = field(default_factory=dict)  # tensor -> onnx elem_type where known
    infos: dict = field(default_factory=dict)  # tensor -> inferred ValueInfoProto (type and shape) where known

    def node_of(self, tensor: str):
        """Returns the NodeProto producing ``tensor``, or None for graph inputs, initializers and unknown names."""
        hit = self.producer.get(tensor)
        return self.nodes[hit[0]] if hit else None

    def readers(self, tensor: str) -> list:
        """Returns the NodeProtos reading ``tensor`` (in topological order)."""
        return [self.nodes[i] for i in self.consumers.get(tensor, [])]

    def is_float(self, tensor: str) -> bool:
        """Returns whether ``tensor`` holds floating-point data (unknown types count as float)."""
        return self.types.get(tensor, FLOAT) in FLOAT_TYPES

    def is_transparent(self, node) -> bool:
        """Returns whether ``node`` only re-encodes an activation: Q, DQ, Identity or a Cast between float types."""
        if not node.input or node.input[0] in self.constant:
            return False
        if node.op_type in QDQ_OPS or node.op_type == "Identity":
            return True
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            return to in FLOAT_TYPES and self.is_float(node.input[0])
        return False

    def tensors(self) -> set[str]:
        """Returns every tensor name the graph defines (inputs, initializers, node outputs)."""
        return set(self.inputs) | set(self.producer) | self.constant


def index_graph(model) -> GraphIndex:
    """Returns the GraphIndex of an ``onnx.ModelProto``; raises ModelError when the graph has a cycle."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    nodes = topological_order(graph)
    index = GraphIndex(nodes=nodes, inputs=inputs, outputs=[o.name for o in graph.output])
    constant = set(inits)
    for pos, node in enumerate(nodes):
        for slot, name in enumerate(node.output):
            if name:
                index.producer[name] = (pos, slot)
        for name in node.input:
            if name:
                index.consumers.setdefault(name, []).append(pos)
        real_inputs = [n for n in node.input if n]
        if node.op_type == "Constant" or (real_inputs and all(n in constant for n in real_inputs)):
            constant.update(n for n in node.output if n)
    index.constant = constant
    index.infos, index.types = inferred_value_infos(model)
    return index
