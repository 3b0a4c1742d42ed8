"""A read-only index of an ONNX graph for the compare passes: topological order, producers, consumers, constants, types.

Only the top-level graph is indexed (If/Loop bodies are opaque nodes). A tensor is *constant* when it is an
initializer, the output of a ``Constant`` node, or the output of a node whose inputs are all constant (a
``DequantizeLinear`` of int8 weights, shape arithmetic on constants). Everything else is an activation.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from fcnquant.errors import ModelError

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
    nodes = _topological(graph, inits | set(inputs))
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
    index.infos, index.types = _value_infos(model)
    return index


def _topological(graph, available: set[str]) -> list:
    """Returns the graph's nodes in a topological order (stable: ready nodes keep their file order)."""
    nodes = list(graph.node)
    produced = {name for node in nodes for name in node.output if name}
    waiting: dict[str, list[int]] = {}
    missing = [0] * len(nodes)
    for pos, node in enumerate(nodes):
        needs = {n for n in node.input if n and n in produced and n not in available}
        missing[pos] = len(needs)
        for name in needs:
            waiting.setdefault(name, []).append(pos)
    ready = [pos for pos in range(len(nodes)) if missing[pos] == 0]
    heapq.heapify(ready)
    order: list = []
    while ready:
        pos = heapq.heappop(ready)
        order.append(nodes[pos])
        for name in nodes[pos].output:
            for user in waiting.pop(name, []):
                missing[user] -= 1
                if missing[user] == 0:
                    heapq.heappush(ready, user)
    if len(order) != len(nodes):
        stuck = [nodes[p].name or nodes[p].op_type for p in range(len(nodes)) if missing[p] > 0][:5]
        raise ModelError(f"the graph has a cycle or reads tensors nobody produces (nodes {stuck})")
    return order


SKELETON_ELEMENTS = 4096  # initializers this large are replaced by typed inputs for shape inference


def skeleton(model) -> tuple[object, set[str]]:
    """Returns (a copy of ``model`` whose large initializers are graph inputs of their type and shape, their names).

    Shape inference needs the values of small constants (Reshape shapes, Slice bounds) but only the shapes of
    weights; onnx's ``infer_shapes`` serializes the whole model first (0.2 s a pass for the full-size fcn8s and its
    134 MB of weights), the skeleton is a few kB. The inferred value infos are the same (tested).
    """
    import onnx
    from onnx import helper

    g = model.graph
    declared = {i.name for i in g.input}
    small, lifted, inputs = [], set(), list(g.input)
    for init in g.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n <= SKELETON_ELEMENTS:
            small.append(init)
        elif init.name not in declared:
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            lifted.add(init.name)
        # (a large initializer that is also a declared input keeps its declaration)
    graph = helper.make_graph(list(g.node), g.name, inputs, list(g.output), small, value_info=list(g.value_info))
    out = onnx.ModelProto(ir_version=model.ir_version, opset_import=list(model.opset_import), graph=graph)
    out.functions.extend(model.functions)
    return out, lifted


def _value_infos(model) -> tuple[dict, dict[str, int]]:
    """Returns ({tensor: ValueInfoProto}, {tensor: elem_type}) from declarations and shape inference (best effort)."""
    import onnx

    lifted: set[str] = set()
    try:
        bare, lifted = skeleton(model)
        inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=False)
    except Exception:  # an exotic op or a >2 GB model: fall back to the declared types
        inferred, lifted = model, set()
    infos: dict = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type.elem_type
        if t:
            infos[vi.name] = vi
            types[vi.name] = t
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        if init.name in lifted:
            infos.pop(init.name, None)  # declared as an input in the skeleton only
    for node in g.node:  # Constant nodes are not always typed by inference
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type:
                    types[node.output[0]] = a.t.data_type
    return infos, types
