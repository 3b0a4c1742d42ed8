"""Small ONNX helpers shared by test modules of several packages."""
from __future__ import annotations


def dims(value_info) -> list:
    """The dimensions of a graph input or output: symbolic names (str) or sizes (int)."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]
