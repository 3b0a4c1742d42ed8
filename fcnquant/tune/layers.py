"""Which layers of a float model the tuner may keep in float, and which nodes each one stands for.

A *layer* is one compute node that the int8 model runs quantized and whose move to float changes the graph:

1. candidates are the nodes of an int8 op type that compute something (``Conv``, ``ConvTranspose``, ``Gemm``,
   ``MatMul``, ``Add``, ``Mul``, ``Concat``, ``AveragePool``); scale-preserving ops (``MaxPool``, ``Resize``)
   reuse their input's scale and grid, so keeping one in float removes no rounding and they are not layers;
2. a candidate whose output feeds a single ``Relu`` (and is not a graph output) is one layer with that Relu
   (``fcnquant.calibrate.tensors`` fuses them the same way); the layer's *output* is then the Relu's output;
3. only candidates that the all-int8 model actually quantized count (``QuantizeResult.float_nodes`` lists the
   others).

Node names are those ``fcnquant.quantize`` uses for ``exclude_nodes`` (unnamed nodes get ``<OpType>_<index>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool"})


@dataclass(frozen=True)
class Layer:
    """One layer the tuner may keep in float: its main node, every node it stands for, and its output tensor."""

    name: str  # the main node's name (what the tuner reports)
    op_type: str
    nodes: tuple[str, ...]  # node names passed to quantize_model(exclude_nodes=...)
    output: str  # the activation whose drift stands for this layer (the fused Relu's output, if any)
    pre_output: str  # the main node's own output (== output when nothing is fused)
    order: int  # position in the float model's node list

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"name": self.name, "op_type": self.op_type, "nodes": list(self.nodes), "output": self.output}


def find_layers(model, float_nodes: Iterable[str] = ()) -> list[Layer]:
    """Returns the layers of ``model`` (an onnx.ModelProto, not modified) in graph order (rules in the module
    docstring); ``float_nodes``: nodes the all-int8 model left in float, which are not layers."""
    import onnx

    from fcnquant.quantize.exclude import name_unnamed_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name_unnamed_nodes(m)
    graph = m.graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    skip = set(float_nodes)
    from fcnquant.calibrate.tensors import analyse

    plan = analyse(m)
    activations = set(plan.observed) | set(plan.inherited)
    layers: list[Layer] = []
    for k, node in enumerate(graph.node):
        if node.op_type not in LAYER_OPS or node.name in skip or not node.output or node.output[0] not in activations:
            continue
        out = node.output[0]
        nodes, final = [node.name], out
        users = consumers.get(out, [])
        if out not in outputs and len(users) == 1 and users[0].op_type == "Relu":
            nodes.append(users[0].name)
            final = users[0].output[0]
        layers.append(Layer(node.name, node.op_type, tuple(nodes), final, out, k))
    return layers


def excluded_nodes(layers: Iterable[Layer]) -> list[str]:
    """Returns the node names of ``layers``, in order, without duplicates."""
    return list(dict.fromkeys(n for layer in layers for n in layer.nodes))
