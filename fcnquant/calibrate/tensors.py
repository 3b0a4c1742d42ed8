"""Graph analysis: which activation tensors a QDQ int8 model needs a scale for, and which reuse another's.

Only the top-level graph is analysed (no If/Loop bodies). An *activation* is a floating-point tensor that
depends on a graph input through data edges: outputs of ``Shape``/``Size`` (and anything computed only from
them or from initializers/constants) are shape arithmetic, not activations.

Rules, applied to every activation in topological order:

1. A graph input is observed.
2. A ``Relu`` output is observed.
3. A *fused* producer is not observed: the output of a ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` or
   ``Add`` whose only consumer is a single ``Relu`` and which is not itself a graph output. The int8 kernel
   applies the Relu in its requantisation, so the tensor uses the Relu output's scale (TensorRT fuses
   Conv+Relu and Conv+Add+Relu; onnxruntime's QDQ quantizer removes such a Relu and moves the Relu
   output's quantization onto the producer).
4. A *scale-preserving* op's output is not observed: it inherits the scale of its data input (input 0).
   These ops only move, select, pad or convexly interpolate values, so their output range lies within the
   input range (plus zero, which every int8 range contains): ``MaxPool``, ``GlobalMaxPool``, ``Resize`` /
   ``Upsample`` (modes nearest and linear; a cubic Resize can overshoot and is observed), ``Reshape``,
   ``Transpose``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Pad``, ``Slice``, ``Split``, ``Identity``,
   ``Dropout``, ``DepthToSpace``, ``SpaceToDepth``.
5. Every other activation is observed: ``Add``, ``Sub``, ``Mul``, ``Concat``, a ``Conv`` not followed by a
   lone Relu (FCN score layers, the classifier), pooling averages, etc.
6. A graph output (the logits) is always observed, even when rule 3 or 4 would let it inherit.

For the awesome FCN8s at 320x320 this gives 21 tensors: the input, 14 Relu outputs, 3 score convs,
2 skip Adds and the logits; the 5 MaxPool and 2 inner Resize outputs inherit.
"""
from __future__ import annotations

from dataclasses import dataclass

from fcnquant.errors import ModelError
from fcnquant.graph import consumers, inferred_value_infos, topological_order

FUSABLE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
SCALE_PRESERVING = frozenset(
    {
        "MaxPool", "GlobalMaxPool", "Resize", "Upsample", "Reshape", "Transpose", "Flatten", "Squeeze",
        "Unsqueeze", "Pad", "Slice", "Split", "Identity", "Dropout", "DepthToSpace", "SpaceToDepth",
    }
)
SHAPE_OPS = frozenset({"Shape", "Size"})
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class ActivationPlan:
    """The result of the analysis: observed tensors (topological order) and inherited scales."""

    observed: tuple[str, ...]
    inherited: dict[str, str]


def activation_tensors(model) -> list[str]:
    """Returns the activation tensors to observe, in topological order (rules in the module docstring)."""
    return list(analyse(model).observed)


def inherited_scales(model) -> dict[str, str]:
    """Returns {activation not observed: observed tensor whose scale it reuses} (rules 3 and 4)."""
    return dict(analyse(model).inherited)


def analyse(model) -> ActivationPlan:
    """Returns the ActivationPlan of an ``onnx.ModelProto`` (see the module docstring for the rules)."""
    graph = model.graph
    # Depth-first order: it decides the order of the observed tensors (and so of the statistics and the table).
    nodes = topological_order(graph, depth_first=True)
    inits = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    outputs = {o.name for o in graph.output}
    _, types = inferred_value_infos(model)
    readers = consumers(graph)

    def is_float(name: str) -> bool:
        # Unknown type (shape inference gave up): treat as float; non-float data is rare in FCNs.
        return types.get(name, 1) in _FLOAT_TYPES

    data = {name for name in inputs}
    observed: list[str] = [name for name in inputs if is_float(name)]
    source: dict[str, str] = {}  # activation -> the tensor whose scale it uses (itself when observed)
    for name in observed:
        source[name] = name
    fused: dict[str, str] = {}  # producer output -> Relu output

    for node in nodes:
        if node.op_type in SHAPE_OPS or not any(name in data for name in node.input if name):
            continue
        for out in node.output:
            if out:
                data.add(out)
        acts = [out for out in node.output if out and is_float(out)]
        if not acts:
            continue
        if node.op_type == "Relu":
            relu_out = node.output[0]
            observed.append(relu_out)
            source[relu_out] = relu_out
            if node.input[0] in fused:
                source[node.input[0]] = relu_out
            continue
        for out in acts:
            users = readers.get(out, [])
            if out in outputs:
                observed.append(out)
                source[out] = out
            elif node.op_type in FUSABLE_PRODUCERS and len(users) == 1 and users[0].op_type == "Relu":
                fused[out] = users[0].output[0]
            elif _preserves_scale(node) and node.input[0] in source:
                source[out] = source[node.input[0]]
            else:
                observed.append(out)
                source[out] = out

    missing = [name for name in fused if name not in source]
    if missing:  # cannot happen for a valid graph; guards against a Relu with a non-data input
        raise ModelError(f"internal: fused tensors without a Relu output: {missing}")
    inherited = {name: src for name, src in source.items() if name != src}
    return ActivationPlan(observed=tuple(observed), inherited=inherited)


def _preserves_scale(node) -> bool:
    if node.op_type not in SCALE_PRESERVING:
        return False
    if node.op_type in ("Resize", "Upsample"):
        for attr in node.attribute:
            if attr.name == "mode" and attr.s.decode() not in ("nearest", "linear", "bilinear"):
                return False
    return True
