"""Parsing a QDQ model into an integer program: which tensors are integers, their scales, and the steps between them.

A QDQ model computes in float between DequantizeLinear and QuantizeLinear nodes. Each QuantizeLinear (other than
the input's) closes one *step*: the float ops from DequantizeLinear outputs to it, i.e. a core op (Conv,
ConvTranspose, Add, Concat, MaxPool, Resize, Pad, Relu), optionally followed by a Relu (or a Clip at 0) fused into
it. A graph output computed from DequantizeLinear outputs without a QuantizeLinear (float logits) is a step with a
float result. Anything else (float compute fed by a float tensor, an op outside that list) is not integer
arithmetic and raises ModelError naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from fcnquant.errors import ModelError

_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
#: the ops a step may have at its core; Conv, ConvTranspose and Add may carry a fused Relu
CORE_OPS = frozenset({"Conv", "ConvTranspose", "Add", "Concat", "MaxPool", "Resize", "Pad", "Relu"})
FUSES_RELU = frozenset({"Conv", "ConvTranspose", "Add"})


@dataclass(frozen=True)
class QTensor:
    """An integer tensor: its name in the model (a QuantizeLinear output), scale, zero point and integer range."""

    name: str
    scale: float
    zero_point: int
    dtype: str

    @property
    def qrange(self) -> tuple[int, int]:
        """Returns (qmin, qmax) of the integer type."""
        return _RANGES[self.dtype]


@dataclass
class Step:
    """One integer operation: a core op on integer tensors, requantized into ``out`` (None: a float output)."""

    name: str  # the core node's name
    op: str  # its op type
    inputs: tuple[QTensor, ...]
    output: str  # the QuantizeLinear output (or the float graph output)
    out: QTensor | None
    relu: bool = False
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None  # int8 weights (zero point subtracted), (O, C/g, kh, kw)
    weight_scale: np.ndarray | None = None  # float64, one per output channel or one
    bias: np.ndarray | None = None  # int32 bias in units of input scale x weight scale (per output channel)
    nodes: tuple[str, ...] = ()  # names of the model's nodes the step stands for (DQs and Q included)


@dataclass
class IntProgram:
    """A QDQ model as integer steps in order; ``input`` is the quantized graph input."""

    input_name: str
    input: QTensor
    steps: list[Step]
    outputs: list[str]  # graph outputs in order: step outputs (float) or integer tensors (dequantized)
    tensors: dict[str, QTensor]

    def layers(self) -> list[Step]:
        """Returns the steps with an integer output (those compared LSB by LSB)."""
        return [s for s in self.steps if s.out is not None]


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Parser:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.made_by = {o: n for n in model.graph.node for o in n.output}
        self.tensors: dict[str, QTensor] = {}

    def const(self, name: str, node, what: str) -> np.ndarray:
        if name not in self.consts:
            raise ModelError(f"cannot emulate node '{node.name}' ({node.op_type}): its {what} '{name}' is not a "
                             "constant")
        return self.consts[name]

    def qparams(self, node) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scale float64, zero point) of a Q or DQ node (zero point int8 0 when absent)."""
        scale = self.const(node.input[1], node, "scale").astype(np.float64)
        zp = (self.const(node.input[2], node, "zero point") if len(node.input) > 2 and node.input[2]
              else np.zeros(scale.shape, np.int8))
        return scale, zp

    def qtensor(self, q) -> QTensor:
        """Returns the QTensor written by the QuantizeLinear ``q`` (per-tensor only)."""
        name = q.output[0]
        if name not in self.tensors:
            scale, zp = self.qparams(q)
            if scale.size != 1:
                raise ModelError(f"cannot emulate '{q.name}': per-channel activation quantization")
            if zp.dtype.name not in _RANGES:
                raise ModelError(f"cannot emulate '{q.name}': activations of type {zp.dtype} (int8, uint8, int16 "
                                 "and uint16 are emulated)")
            self.tensors[name] = QTensor(name, float(scale.reshape(())), int(zp.reshape(())), zp.dtype.name)
        return self.tensors[name]

    def activation(self, name: str, node) -> tuple[QTensor, list[str]]:
        """Returns the integer tensor a float input ``name`` dequantizes (and the DQ's name)."""
        dq = self.made_by.get(name)
        q = self.made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            raise ModelError(f"cannot emulate node '{node.name}' ({node.op_type}): its input '{name}' is float "
                             "compute, not a quantized tensor (run `fcnquant check` for the ops a target cannot "
                             "run in integer)")
        t = self.qtensor(q)
        scale, zp = self.qparams(dq)
        if float(scale.reshape(-1)[0]) != t.scale or int(zp.reshape(-1)[0]) != t.zero_point:
            raise ModelError(f"cannot emulate '{dq.name}': it dequantizes '{t.name}' with other parameters than "
                             "its QuantizeLinear")
        return t, [dq.name]

    def weight(self, name: str, node) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Returns (integer weights minus zero point, scales, node names) of a DequantizeLinear'd initializer."""
        dq = self.made_by.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise ModelError(f"cannot emulate node '{node.name}' ({node.op_type}): its weight '{name}' is float, "
                             "not an int8 initializer behind a DequantizeLinear")
        q = self.consts[dq.input[0]]
        scale, zp = self.qparams(dq)
        axis = int(_attrs(dq).get("axis", 1))
        if scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = scale.size
            zp = zp.reshape(shape)
        return q.astype(np.int64) - zp.astype(np.int64), scale.reshape(-1), [dq.name]

    def bias(self, name: str, node, acc_scale: np.ndarray, channels: int) -> tuple[np.ndarray, list[str]]:
        """Returns the int32 bias in accumulator units (rescaled, rounded half to even, if its scale differs)."""
        dq = self.made_by.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.consts:
            q, scale, names = self.weight(name, node)
            real = q.astype(np.float64) * np.broadcast_to(scale, q.shape)
        else:
            real, names = self.const(name, node, "bias").astype(np.float64), []
        acc = np.broadcast_to(acc_scale, (channels,))
        return np.rint(real / acc).astype(np.int64), names


def build_program(model) -> IntProgram:
    """Returns the IntProgram of a QDQ ``model`` (ModelProto); ModelError for what integer arithmetic cannot run."""
    p = _Parser(model)
    graph = model.graph
    if len(graph.input) != 1:
        raise ModelError(f"the emulator runs models with one image input, found {len(graph.input)}")
    input_name = graph.input[0].name
    users = [n for n in graph.node if input_name in n.input]
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise ModelError(f"cannot emulate: the input '{input_name}' is not quantized by one QuantizeLinear")
    in_q = p.qtensor(users[0])
    steps: list[Step] = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node is not users[0]:
            out = p.qtensor(node)
            steps.append(_step(p, p.made_by.get(node.input[0]), node.input[0], node, out))
    outputs = []
    for o in graph.output:
        made = p.made_by.get(o.name)
        if made is not None and made.op_type == "DequantizeLinear":
            t, _ = p.activation(o.name, made)
            outputs.append(t.name)
        else:
            steps.append(_step(p, made, o.name, None, None))
            outputs.append(o.name)
    return IntProgram(input_name, in_q, steps, outputs, dict(p.tensors))


def _step(p: _Parser, node, x: str, q, out: QTensor | None) -> Step:
    """Returns the Step computing float tensor ``x`` (then quantized by ``q`` into ``out``, or a float output)."""
    if node is None:
        raise ModelError(f"cannot emulate: '{x}' is not computed by a node")
    relu = False
    names = [q.name] if q is not None else []
    if node.op_type in ("Relu", "Clip") and p.made_by.get(node.input[0]) is not None \
            and p.made_by[node.input[0]].op_type in FUSES_RELU:
        if node.op_type == "Clip" and not _clip_is_relu(p, node):
            raise ModelError(f"cannot emulate node '{node.name}' (Clip): only a Clip at 0 with no upper bound is")
        relu, names = True, names + [node.name]
        node = p.made_by[node.input[0]]
    if node.op_type not in CORE_OPS or node.domain not in ("", "ai.onnx"):
        raise ModelError(f"cannot emulate node '{node.name}' ({node.op_type}): the emulator runs "
                         f"{', '.join(sorted(CORE_OPS))} on integers")
    attrs = _attrs(node)
    step = Step(node.name, node.op_type, (), x if q is None else q.output[0], out, relu, attrs)
    names.append(node.name)
    if node.op_type in ("Conv", "ConvTranspose"):
        t, n1 = p.activation(node.input[0], node)
        w, ws, n2 = p.weight(node.input[1], node)
        channels = w.shape[0] if node.op_type == "Conv" else w.shape[1] * int(attrs.get("group", 1))
        if node.op_type == "ConvTranspose" and ws.size > 1 and int(attrs.get("group", 1)) != 1:
            raise ModelError(f"cannot emulate '{node.name}': grouped ConvTranspose with per-channel weights")
        step.inputs, step.weight, step.weight_scale = (t,), w, ws
        bias, n3 = (p.bias(node.input[2], node, t.scale * ws, channels) if len(node.input) > 2 and node.input[2]
                    else (np.zeros(channels, np.int64), []))
        step.bias, names = bias, names + n1 + n2 + n3
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ModelError(f"cannot emulate '{node.name}': auto_pad (explicit pads are emulated)")
    elif node.op_type == "Resize":
        t, n1 = p.activation(node.input[0], node)
        step.inputs, names = (t,), names + n1
        step.attrs["resize"] = _resize_geometry(p, node, attrs)
    elif node.op_type == "Pad":
        t, n1 = p.activation(node.input[0], node)
        step.inputs, names = (t,), names + n1
        step.attrs["pad_values"] = [int(v) for v in p.const(node.input[1], node, "pads")]
        cval = float(p.const(node.input[2], node, "constant").reshape(())) if len(node.input) > 2 and node.input[2] \
            else 0.0
        if attrs.get("mode", b"constant") not in (b"constant", "constant") or cval != 0.0:
            raise ModelError(f"cannot emulate '{node.name}': only Pad with the constant 0 is emulated")
    else:
        ins = [p.activation(i, node) for i in node.input if i]
        step.inputs = tuple(t for t, _ in ins)
        names += [n for _, ns in ins for n in ns]
    step.nodes = tuple(dict.fromkeys(names))
    return step


def _clip_is_relu(p: _Parser, node) -> bool:
    lo = p.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 else ""
    return lo is not None and float(lo.reshape(())) == 0.0 and not hi


def _resize_geometry(p: _Parser, node, attrs: dict) -> dict:
    """Returns {mode, coord, nearest, sizes (H, W) or None, scales (Fraction, Fraction) or None} of a Resize."""
    def text(v, default):
        v = attrs.get(v, default)
        return v.decode() if isinstance(v, bytes) else v

    sizes = scales = None
    if len(node.input) > 3 and node.input[3]:
        s = p.const(node.input[3], node, "sizes").astype(np.int64)
        if len(s) != 4:
            raise ModelError(f"cannot emulate '{node.name}': Resize sizes of rank {len(s)}")
        sizes = (int(s[2]), int(s[3]))
    elif len(node.input) > 2 and node.input[2]:
        s = p.const(node.input[2], node, "scales").astype(np.float64)
        if len(s) != 4 or s[0] != 1 or s[1] != 1:
            raise ModelError(f"cannot emulate '{node.name}': Resize scales {list(s)} (only H and W may scale)")
        scales = (Fraction(float(np.float32(s[2]))), Fraction(float(np.float32(s[3]))))
    else:
        raise ModelError(f"cannot emulate '{node.name}': Resize without sizes or scales")
    mode = text("mode", "nearest")
    if mode not in ("linear", "nearest"):
        raise ModelError(f"cannot emulate '{node.name}': Resize mode {mode!r} (linear and nearest are emulated)")
    return {"mode": mode, "coord": text("coordinate_transformation_mode", "half_pixel"),
            "nearest": text("nearest_mode", "round_prefer_floor"), "sizes": sizes, "scales": scales}
