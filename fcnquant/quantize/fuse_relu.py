"""Graph pass: quantize a producer and its Relu as one unit by removing the Q/DQ pair between them.

onnxruntime's QDQ quantizer removes a Relu that follows a Conv when activations are asymmetric (the Relu is
absorbed into the output zero point). With symmetric activations (``tensorrt``, ``npu-pow2``) the Relu must stay,
and onnxruntime then quantizes the producer's output too, leaving ``Conv -> Q -> DQ -> Relu -> Q -> DQ``.
Accelerators fuse Conv+Relu and requantize once, after the Relu, so this pass rewrites

1. ``P -> X -> QuantizeLinear -> DequantizeLinear -> Relu`` into ``P -> X -> Relu`` when ``P`` is a fusable
   producer (Conv, ConvTranspose, Gemm, MatMul, Add), ``X`` is read only by that QuantizeLinear and is not a
   graph output, and the Q and DQ outputs each have exactly one reader.
2. Unused scale / zero-point initializers are dropped afterwards.

The rewrite does not change the model's values when the removed pair used the Relu output's scale and a zero
point of 0 (the quantizer is given exactly that): clipping at ``-128 * s`` before a Relu and rounding twice on
the same grid give the same result as one rounding after the Relu.
"""
from __future__ import annotations

from fcnquant.graph import consumers, graph_outputs, producers, prune_initializers, remove_nodes

FUSABLE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})


def fuse_relu_qdq(model) -> int:
    """Removes the Q/DQ pairs between fusable producers and their Relu in place; returns how many were removed."""
    graph = model.graph
    made_by = producers(graph)
    users = consumers(graph)
    outputs = graph_outputs(graph)
    doomed: list = []
    for relu in graph.node:
        if relu.op_type != "Relu":
            continue
        dq = made_by.get(relu.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users.get(dq.output[0], [])) != 1:
            continue
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(users.get(q.output[0], [])) != 1:
            continue
        x = q.input[0]
        producer = made_by.get(x)
        if producer is None or producer.op_type not in FUSABLE_PRODUCERS:
            continue
        if len(users.get(x, [])) != 1 or x in outputs or dq.output[0] in outputs or q.output[0] in outputs:
            continue
        relu.input[0] = x
        doomed += [q, dq]
    if doomed:
        remove_nodes(graph, doomed)
        prune_initializers(graph)
    return len(doomed) // 2
