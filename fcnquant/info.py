"""What an ONNX model is, read from its graph alone: inputs and outputs, opset, unique parameters, multiply-accumulates
and FLOPs per op type, precision (float32, fp16, int8 QDQ and its target), quantized tensors, file size.

Counting convention (also in docs/info.md):

* **Parameters** are the elements of the graph's initializers that some node reads as data: each initializer once,
  however many nodes read it (weights shared between layers count once). Not parameters: integer index/shape
  tensors (int64), the scale and zero point of QuantizeLinear/DequantizeLinear, and the roi/scales/sizes of
  Resize/Upsample. In an int8 QDQ model a weight is its quantized initializer (the input of its DequantizeLinear),
  counted once. ``Constant`` nodes are not counted.
* **MACs** (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm and MatMul (and their integer and
  QLinear forms) at the model's input size (symbolic dims set to 1) or the one given:
  Conv: output elements x (input channels / group) x kernel area; ConvTranspose: *input* elements x
  (output channels / group) x kernel area (each input pixel is scattered over the kernel); Gemm/MatMul: output
  elements x the reduced dimension. Bias additions, elementwise ops, normalisation, activations, pooling and Resize
  are not counted.
* **FLOPs = 2 x MACs** (one multiply and one add per MAC).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcnquant.errors import ModelError

#: (op type, input slot) pairs whose initializer is a quantization parameter or a resize argument, not a parameter
NON_PARAM_SLOTS = {("QuantizeLinear", 1), ("QuantizeLinear", 2), ("DequantizeLinear", 1), ("DequantizeLinear", 2),
                   ("Resize", 1), ("Resize", 2), ("Resize", 3), ("Upsample", 1)}
#: the op types whose multiply-accumulates are counted, and the input slot of their weight
MAC_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1,
           "MatMulInteger": 1, "QLinearMatMul": 3}
CONVENTION = ("MACs: Conv, ConvTranspose (per input pixel), Gemm, MatMul (and integer/QLinear forms); FLOPs = 2 x "
              "MACs; bias, elementwise, activation, normalisation, pooling and Resize ops are not counted. "
              "Params: each initializer once (shared weights once); int8 weights as their quantized initializer; "
              "Q/DQ scales and zero points, Resize arguments and int64 tensors excluded.")
_ELEM_NAMES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 16: "bfloat16"}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, element type and shape (a symbolic dim as its name, unknown as None)."""

    name: str
    dtype: str
    shape: tuple

    def shape_text(self) -> str:
        """Returns the shape as ``1x3x320x320`` (``?`` for an unknown dim)."""
        return "x".join("?" if d is None else str(d) for d in self.shape)


@dataclass(frozen=True)
class ModelInfo:
    """The summary :func:`model_info` returns; ``to_dict`` is what ``fcnquant info --json`` prints."""

    path: str
    file_bytes: int
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    counted_input: tuple[int, ...]  # the input shape the MACs are counted at
    params: int
    params_by_dtype: dict[str, int]
    macs: int
    macs_by_op: dict[str, int]
    nodes_by_op: dict[str, int]
    precision: str  # "float32", "fp16" or "int8 QDQ"
    quantized_activations: int = 0
    quantized_weights: int = 0
    target: str | None = None
    table_sha256: str | None = None
    per_channel: bool | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()  # MAC-op nodes whose shapes inference could not give

    @property
    def flops(self) -> int:
        """Returns 2 x MACs."""
        return 2 * self.macs

    @property
    def shape_text(self) -> str:
        """Returns the counted input shape as ``1x3x320x320``."""
        return "x".join(str(d) for d in self.counted_input)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict of everything, with the counting convention."""
        return {
            "path": self.path, "file_bytes": self.file_bytes, "opset": self.opset,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.outputs],
            "counted_input": list(self.counted_input), "params": self.params,
            "params_by_dtype": self.params_by_dtype, "macs": self.macs, "flops": self.flops,
            "macs_by_op": self.macs_by_op, "flops_by_op": {k: 2 * v for k, v in self.macs_by_op.items()},
            "nodes_by_op": self.nodes_by_op, "precision": self.precision,
            "quantized_activations": self.quantized_activations, "quantized_weights": self.quantized_weights,
            "target": self.target, "table_sha256": self.table_sha256, "per_channel": self.per_channel,
            "metadata": self.metadata, "uncounted": list(self.uncounted), "convention": CONVENTION,
        }

    def format_text(self) -> str:
        """Returns the terminal summary."""
        lines = [f"model:     {self.path} ({self.file_bytes / 1e6:.2f} MB), opset {self.opset}"]
        lines += [f"input:     {t.name} {t.dtype} {t.shape_text()}" for t in self.inputs]
        lines += [f"output:    {t.name} {t.dtype} {t.shape_text()}" for t in self.outputs]
        prec = self.precision
        if self.precision == "int8 QDQ":
            gran = {True: ", per-channel weights", False: ", per-tensor weights", None: ""}[self.per_channel]
            prec += f" (target {self.target or '-'}{gran}; table sha256 {(self.table_sha256 or '-')[:16]})"
            prec += f"; {self.quantized_activations} quantized activations, {self.quantized_weights} weights"
        lines.append(f"precision: {prec}")
        by_dtype = ", ".join(f"{k} {v:,}" for k, v in sorted(self.params_by_dtype.items()))
        lines.append(f"params:    {self.params:,} ({self.params / 1e6:.3f} M; {by_dtype or 'none'})")
        lines.append(f"at input {self.shape_text}: {self.macs / 1e9:.3f} GMACs, {self.flops / 1e9:.3f} GFLOPs")
        for op, m in sorted(self.macs_by_op.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {op:<14} {self.nodes_by_op.get(op, 0):>4} nodes {m / 1e9:10.3f} GMACs "
                         f"{2 * m / 1e9:10.3f} GFLOPs")
        if self.uncounted:
            lines.append(f"not counted (shapes unknown): {', '.join(self.uncounted[:5])}")
        lines.append("convention: " + CONVENTION)
        return "\n".join(lines)


def model_info(model: str | os.PathLike[str] | Any, size: int | tuple[int, int] | None = None) -> ModelInfo:
    """Returns the :class:`ModelInfo` of an ONNX model (a path or a ModelProto).

    ``size`` (an int for a square, or (height, width)) sets the spatial dims of the image input (the first input
    of rank 4) before MACs are counted; by default the model's own input size is used. Symbolic dims count as 1.
    Raises ModelError when the file cannot be read.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # a missing or corrupt file: say which
            raise ModelError(f"cannot read ONNX model {path}: {exc}") from exc
        where, nbytes = str(path), path.stat().st_size
    else:
        proto, where, nbytes = model, "<in memory>", model.ByteSize()
    g = proto.graph
    inits = {t.name for t in g.initializer}
    inputs = tuple(_tensor(v) for v in g.input if v.name not in inits)
    counted = _set_input_size(proto, inputs, size)
    params, by_dtype = count_params(proto)
    macs, by_op, nodes, uncounted = count_macs(counted)
    meta = {p.key: p.value for p in proto.metadata_props}
    precision, acts, weights = _precision(proto)
    per_channel = meta.get("fcnquant.per_channel")
    return ModelInfo(
        path=where, file_bytes=nbytes, opset=_opset(proto), inputs=inputs,
        outputs=tuple(_tensor(v) for v in g.output), counted_input=_counted_shape(counted, inputs),
        params=params, params_by_dtype=by_dtype, macs=macs, macs_by_op=by_op, nodes_by_op=nodes,
        precision=precision, quantized_activations=acts, quantized_weights=weights,
        target=meta.get("fcnquant.target"), table_sha256=meta.get("fcnquant.table_sha256"),
        per_channel=None if per_channel is None else per_channel == "true",
        metadata={k: v for k, v in meta.items() if len(v) <= 200}, uncounted=tuple(uncounted),
    )


def count_params(model) -> tuple[int, dict[str, int]]:
    """Returns (unique parameter count, {element type: count}) under the convention in the module docstring."""
    slots: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                slots.setdefault(name, set()).add((node.op_type, i))
    total, by_dtype = 0, {}
    for init in model.graph.initializer:
        uses = slots.get(init.name, set())
        if init.data_type == 7 or not uses or uses <= NON_PARAM_SLOTS:
            continue
        n = _numel(init.dims)
        total += n
        key = _ELEM_NAMES.get(init.data_type, str(init.data_type))
        by_dtype[key] = by_dtype.get(key, 0) + n
    return total, by_dtype


def count_macs(model) -> tuple[int, dict[str, int], dict[str, int], list[str]]:
    """Returns (MACs, {op type: MACs}, {op type: nodes}, names of MAC-op nodes whose shapes are unknown).

    Shapes come from onnx shape inference on the weight-less skeleton (``fcnquant.graph.inferred_value_infos``);
    weight shapes from the initializers.
    """
    from fcnquant.graph import inferred_value_infos

    infos, _ = inferred_value_infos(model)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for name, vi in infos.items():
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(name, tuple(d.dim_value for d in dims))
    total, by_op, nodes, unknown = 0, {}, {}, []
    for node in model.graph.node:
        nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
        if node.op_type not in MAC_OPS:
            continue
        m = _node_macs(node, shapes)
        if m is None:
            unknown.append(node.name or node.op_type)
            continue
        total += m
        by_op[node.op_type] = by_op.get(node.op_type, 0) + m
    return total, by_op, nodes, unknown


def _node_macs(node, shapes: dict[str, tuple]) -> int | None:
    """Returns the MACs of one Conv/ConvTranspose/Gemm/MatMul node, None when a shape it needs is unknown."""
    op, slot = node.op_type, MAC_OPS[node.op_type]
    if len(node.input) <= slot:
        return None
    w, x, y = shapes.get(node.input[slot]), shapes.get(node.input[0]), shapes.get(node.output[0])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        return None if w is None or y is None else _numel(y) * _numel(w[1:])
    if op == "ConvTranspose":
        return None if w is None or x is None else _numel(x) * _numel(w[1:])
    if x is None or y is None:
        return None
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return _numel(y) * (x[0] if trans_a else x[-1])
    return _numel(y) * x[-1]  # MatMul: the reduced dimension is A's last


def _precision(model) -> tuple[str, int, int]:
    """Returns (precision, quantized activations, quantized weights) of the model."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dq_weights = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    q_acts = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    if dq_weights or q_acts:
        weights = {w for w in dq_weights if inits[w].data_type in (2, 3)}  # int32 biases are not quantized weights
        return "int8 QDQ", len(q_acts), len(weights)
    floats = [(t.data_type, _numel(t.dims)) for t in g.initializer if t.data_type in (1, 10, 11, 16)]
    half = sum(n for dt, n in floats if dt == 10)
    return ("fp16" if half * 2 > sum(n for _, n in floats) else "float32"), 0, 0


def _set_input_size(model, inputs: tuple[TensorInfo, ...], size) -> Any:
    """Returns ``model`` (a copy when changed) with symbolic dims of its inputs set to 1 and ``size`` applied."""
    image = next((t.name for t in inputs if len(t.shape) == 4), None)
    if size is not None and image is None:
        raise ModelError("--size needs a model with a 4-d image input")
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    if hw is None and all(isinstance(d, int) for t in inputs for d in t.shape):
        return model
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    for vi in work.graph.input:
        if vi.name not in {t.name for t in inputs}:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if hw is not None and vi.name == image and k in (2, 3):
                d.dim_value = int(hw[k - 2])
            elif not d.HasField("dim_value"):
                d.dim_value = 1
    del work.graph.value_info[:]  # declared intermediate shapes are those of the old size
    for out in work.graph.output:
        out.type.tensor_type.ClearField("shape")
    return work


def _counted_shape(model, inputs: tuple[TensorInfo, ...]) -> tuple[int, ...]:
    image = next((t.name for t in inputs if len(t.shape) == 4), inputs[0].name if inputs else None)
    for vi in model.graph.input:
        if vi.name == image:
            return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
    return ()


def _tensor(vi) -> TensorInfo:
    t = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return TensorInfo(vi.name, _ELEM_NAMES.get(t.elem_type, str(t.elem_type)), dims)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n
