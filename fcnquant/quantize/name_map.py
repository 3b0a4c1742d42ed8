"""The float-tensor -> quantized-tensor name map written into every emitted model (read by compare).

The map is built by walking the emitted graph, never by parsing names: for every ``QuantizeLinear`` whose input
is a tensor ``T`` of the float model, ``T`` maps to the output of the first ``DequantizeLinear`` reading that
QuantizeLinear's output (the tensor that stands for ``T`` in the int8 graph). When the quantizer renamed a graph
output ``T`` and put the DequantizeLinear's output under the name ``T``, ``T`` maps to itself.

Only activations are mapped (tensors of the float model that are not initializers).
"""
from __future__ import annotations

import json

from fcnquant.graph import consumers

TENSOR_MAP_KEY = "fcnquant.tensor_map"
TABLE_SHA_KEY = "fcnquant.table_sha256"


def build_tensor_map(model, float_tensors: set[str]) -> dict[str, str]:
    """Returns {float tensor name: DequantizeLinear output standing for it} for the emitted ``model``."""
    users = consumers(model.graph)
    mapping: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dqs = [u for u in users.get(node.output[0], []) if u.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        source, dq_out = node.input[0], dqs[0].output[0]
        if source in float_tensors:
            mapping.setdefault(source, dq_out)
        elif dq_out in float_tensors:
            mapping.setdefault(dq_out, dq_out)
    return mapping


def set_metadata(model, entries: dict[str, str]) -> None:
    """Sets (replacing existing keys) string entries in the model's ``metadata_props``."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in keep + list(entries.items()):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def read_tensor_map(model) -> dict[str, str]:
    """Returns the tensor map stored in a model emitted by fcnquant ({} when absent)."""
    for prop in model.metadata_props:
        if prop.key == TENSOR_MAP_KEY:
            return json.loads(prop.value)
    return {}
