"""Graph pass: keep the model's outputs (the logits) in float instead of quantized.

onnxruntime's QDQ quantizer quantizes a graph output ``T`` by renaming its producer's output to
``X`` and appending ``X -> QuantizeLinear -> DequantizeLinear -> T``. For float logits this pass rewrites, for
each graph output ``T`` made by that pattern (``X`` read only by the QuantizeLinear):

1. ``T`` read by nothing else: the producer writes ``T`` directly; the Q/DQ pair is removed.
2. ``T`` also read inside the graph: the producer writes ``T`` directly, the QuantizeLinear now reads ``T`` and
   the DequantizeLinear's output gets a fresh name that the inner readers use, so they stay quantized.
3. Unused scale / zero-point initializers are dropped afterwards.
"""
from __future__ import annotations

from fcnquant.graph import (
    consumers,
    graph_outputs,
    producers,
    prune_initializers,
    remove_nodes,
    rename_input,
    unique_name,
)


def float_outputs(model) -> list[str]:
    """Rewrites the graph in place so its outputs are float; returns the outputs that were changed."""
    graph = model.graph
    made_by = producers(graph)
    users = consumers(graph)
    taken = set(made_by) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    doomed: list = []
    changed: list[str] = []
    for out in graph_outputs(graph):
        dq = made_by.get(out)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(users.get(q.output[0], [])) != 1:
            continue
        x = q.input[0]
        producer = made_by.get(x)
        if producer is None or len(users.get(x, [])) != 1:
            continue
        inner = users.get(out, [])
        for i, name in enumerate(producer.output):
            if name == x:
                producer.output[i] = out
        if inner:
            fresh = unique_name(taken, f"{out}_dequantized")
            rename_input(graph, out, fresh)
            dq.output[0] = fresh
            q.input[0] = out
        else:
            doomed += [q, dq]
        changed.append(out)
    if doomed:
        remove_nodes(graph, doomed)
    prune_initializers(graph)
    return changed
