"""What the legality check reads from a QDQ graph: activations, element types, constants, and each op's data inputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the input slots of an op that carry data to be quantized (the rest are shapes, scales, ROIs, biases)
DATA_SLOTS: dict[str, slice] = {
    "Conv": slice(0, 2), "ConvTranspose": slice(0, 2), "Gemm": slice(0, 2), "MatMul": slice(0, 2),
    "Add": slice(0, 2), "Sub": slice(0, 2), "Mul": slice(0, 2), "Concat": slice(0, None),
    "MaxPool": slice(0, 1), "AveragePool": slice(0, 1), "GlobalAveragePool": slice(0, 1), "Resize": slice(0, 1),
    "Upsample": slice(0, 1), "Pad": slice(0, 1), "Relu": slice(0, 1), "Clip": slice(0, 1),
    "LeakyRelu": slice(0, 1), "Sigmoid": slice(0, 1), "Softmax": slice(0, 1),
}
#: ops that an integer pipeline fuses into the requantization of the op before them
FUSED_ACTIVATIONS = ("Relu", "Clip")
#: ops whose outputs are shape integers, not activations
SHAPE_OPS = ("Shape", "Size")
#: ONNX element types by number (those the check tells apart)
ELEM = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 10: "fp16",
        11: "double", 16: "bfloat16"}


@dataclass
class GraphView:
    """The lookups the check needs, computed once over a model's top-level graph."""

    nodes: list
    names: dict[int, str]  # id(node) -> its name (unnamed nodes: <OpType>_<index>, as quantize names them)
    made_by: dict[str, object]
    users: dict[str, list]
    inits: dict[str, np.ndarray]
    activations: set[str]  # tensors computed from the graph inputs (not weights, not shape arithmetic)
    dtypes: dict[str, str]
    outputs: set[str]

    def name(self, node) -> str:
        return self.names[id(node)]

    def data_inputs(self, node) -> list[str]:
        """Returns the node's data inputs: its activations and float weights in the data slots."""
        slots = DATA_SLOTS.get(node.op_type, slice(0, None))
        return [x for x in list(node.input)[slots] if x and (x in self.activations or x in self.inits)]


def view(model) -> GraphView:
    """Returns the GraphView of ``model`` (a ModelProto)."""
    from onnx import numpy_helper

    from fcnquant.graph import consumers, producers

    graph = model.graph
    nodes = list(graph.node)
    names = {}
    for i, node in enumerate(nodes):
        names[id(node)] = node.name or f"{node.op_type}_{i}"
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dtypes = {t.name: ELEM.get(t.data_type, str(t.data_type)) for t in graph.initializer}
    dtypes.update({i.name: ELEM.get(i.type.tensor_type.elem_type, "?") for i in graph.input})
    for node in nodes:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t)
                    dtypes[node.output[0]] = ELEM.get(a.t.data_type, "?")
    activations = {i.name for i in graph.input if i.name not in inits}
    for node in nodes:  # ONNX requires topological order
        if node.op_type not in SHAPE_OPS and any(x in activations for x in node.input if x):
            activations.update(o for o in node.output if o)
        _propagate_dtype(node, dtypes)
    return GraphView(nodes, names, producers(graph), consumers(graph), inits, activations, dtypes,
                     {o.name for o in graph.output})


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _propagate_dtype(node, dtypes: dict[str, str]) -> None:
    """Sets the element type of ``node``'s outputs from its inputs (what the check needs: float vs fp16 vs int)."""
    if not node.output:
        return
    op = node.op_type
    if op == "Cast":
        dt = ELEM.get(_attr(node, "to", 1), "?")
    elif op == "DequantizeLinear":
        dt = dtypes.get(node.input[1], "float")  # the scale's type
    elif op == "QuantizeLinear":
        dt = dtypes.get(node.input[2], "uint8") if len(node.input) > 2 and node.input[2] else "uint8"
        if _attr(node, "output_dtype"):
            dt = ELEM.get(_attr(node, "output_dtype"), dt)
    elif op in SHAPE_OPS:
        dt = "int64"
    else:
        dt = next((dtypes[x] for x in node.input if x and x in dtypes), "?")
    for out in node.output:
        if out:
            dtypes[out] = dt
