"""The graph side of bias correction: which Convs of a QDQ model can be corrected, their dependency levels, and
the edits (a model cut at chosen tensors, the input-rounding-error tensor, the int32 bias update)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fcnquant.recover.bias_correction.channel_means import corrected_int32_bias
from fcnquant.recover.bias_correction.taps import TapGeometry

_WEIGHTED = ("Conv", "ConvTranspose")


@dataclass
class Target:
    """One correctable Conv of the QDQ model, with what its mean error is computed from."""

    node: str
    output: str
    bias_init: str  # the int32 initializer read by the bias DequantizeLinear
    bias_scale: np.ndarray  # per channel
    float_output: str = ""  # the same Conv's output tensor in the float model
    input: str = ""  # the (dequantized) input tensor of the Conv in the QDQ model
    geometry: tuple | None = None  # (kernel, pads, strides, dilations) of a plain 2-D Conv
    delta_w: np.ndarray | None = None  # dequantized int8 weights - float weights (Cout, Cin, KH, KW)
    float_bias: np.ndarray | None = None  # the float model's bias (its int32 rounding is part of the error)
    float_weight: np.ndarray | None = None  # the float model's weights
    float_input: str = ""  # the Conv's input tensor in the float model
    taps: "TapLayer | None" = None  # what the fast form needs (None: a layer it cannot correct)


@dataclass(frozen=True)
class TapLayer:
    """A 2-D Conv / ConvTranspose as the fast form corrects it: its geometry and group, its weight error
    (dequantized int8 minus float weights, in the op's own layout) and the float model's bias."""

    geometry: TapGeometry
    group: int
    delta_w: np.ndarray
    float_bias: np.ndarray


#: ops a mean shift passes through unchanged in kind (no decision is taken on the value): the path from a score
#: Conv to the logits in FCNs (skip Adds, bilinear Resize, the Q/DQ pairs of the int8 graph)
_LINEAR_OPS = frozenset({"Add", "Sub", "Resize", "Upsample", "QuantizeLinear", "DequantizeLinear", "Identity",
                         "Concat", "Slice", "Pad", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast"})


def logit_layers(model) -> set[str]:
    """Returns the names of the Conv/ConvTranspose nodes whose output reaches a graph output through linear ops
    only (``_LINEAR_OPS``): the layers that score classes, whose bias sets the decision between classes."""
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    memo: dict[str, bool] = {}

    def reaches(tensor: str) -> bool:
        stack, seen, found = [tensor], set(), False
        while stack and not found:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in outputs or memo.get(t):
                found = True
                break
            stack.extend(o for u in users.get(t, []) if u.op_type in _LINEAR_OPS for o in u.output)
        memo[tensor] = found
        return found

    return {n.name for n in model.graph.node if n.op_type in _WEIGHTED and reaches(n.output[0])}


def find_targets(qmodel, float_model, *, skip_logits: bool = True) -> tuple[list[Target], list[tuple[str, str]]]:
    """Returns (correctable Conv layers of the QDQ model in graph order, [(node, reason)] of those skipped).

    ``skip_logits`` leaves out the class-scoring layers (``logit_layers``): see
    :class:`~fcnquant.recover.bias_correction.correction.BiasCorrectionOptions`.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in qmodel.graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type in _WEIGHTED}
    made_by = {o: n for n in qmodel.graph.node for o in n.output}
    float_by_output = {n.output[0]: n for n in float_model.graph.node if n.op_type in _WEIGHTED}
    targets: list[Target] = []
    skipped: list[tuple[str, str]] = []
    seen_bias: set[str] = set()
    scoring = logit_layers(qmodel) if skip_logits else set()
    for node in qmodel.graph.node:
        if node.op_type not in _WEIGHTED:
            continue
        w_src = made_by.get(node.input[1]) if len(node.input) > 1 else None
        if w_src is None or w_src.op_type != "DequantizeLinear":
            continue  # a float layer (excluded, or outside the int8 region): nothing quantized to correct
        if node.name in scoring:
            skipped.append((node.name, "scores classes (its output reaches the logits through linear ops only)"))
            continue
        # the same node by name (onnxruntime renames a Conv's output when it folds the Relu after it into the
        # output's zero point), else by output tensor
        float_node = float_nodes.get(node.name) or float_by_output.get(node.output[0])
        if float_node is None or float_node.op_type != node.op_type:
            skipped.append((node.name, "no Conv of the same name or output tensor in the float model"))
            continue
        b_src = made_by.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if b_src is None or b_src.op_type != "DequantizeLinear" or b_src.input[0] not in inits:
            skipped.append((node.name, "has no int32 bias (a Conv without bias, or a float bias)"))
            continue
        b_init = inits[b_src.input[0]]
        if b_init.data_type != 6:  # TensorProto.INT32
            skipped.append((node.name, "its bias is not stored as int32"))
            continue
        if b_init.name in seen_bias:
            skipped.append((node.name, f"shares its bias '{b_init.name}' with another layer"))
            continue
        scale_name = b_src.input[1]
        if scale_name not in inits:
            skipped.append((node.name, "its bias scale is not a constant"))
            continue
        channels = int(numpy_helper.to_array(b_init).size)
        scale = np.broadcast_to(numpy_helper.to_array(inits[scale_name]).astype(np.float64), (channels,)).copy()
        seen_bias.add(b_init.name)
        targets.append(Target(node.name, node.output[0], b_init.name, scale, float_node.output[0], node.input[0],
                               *_weight_error(node, w_src, inits, float_node, float_inits),
                               float_input=float_node.input[0],
                               taps=tap_layer(node, w_src, inits, float_node, float_inits)))
    return targets, skipped


def _weight_error(node, w_dq, inits, float_node, float_inits) -> tuple:
    """Returns (geometry, dequantized - float weights, float bias) of a plain 2-D Conv (group 1, explicit pads),
    else (None, None, None): such layers are corrected by their accumulated error only."""
    from onnx import helper, numpy_helper

    if node.op_type != "Conv" or float_node is None or len(float_node.input) < 2:
        return None, None, None, None
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None, None, None, None
    if float_node.input[1] not in float_inits or w_dq.input[0] not in inits or w_dq.input[1] not in inits:
        return None, None, None, None
    w_float = numpy_helper.to_array(float_inits[float_node.input[1]]).astype(np.float64)
    if w_float.ndim != 4:
        return None, None, None, None
    w_int = numpy_helper.to_array(inits[w_dq.input[0]]).astype(np.float64)
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[w_dq.input[2]]).astype(np.float64) if len(w_dq.input) > 2 and \
        w_dq.input[2] in inits else 0.0
    if np.ndim(w_scale) == 1:  # per output channel (axis 0)
        w_scale = w_scale[:, None, None, None]
        zp = np.reshape(zp, (-1, 1, 1, 1)) if np.ndim(zp) == 1 else zp
    w_deq = (w_int - zp) * w_scale
    if len(float_node.input) > 2 and float_node.input[2] in float_inits:
        b_float = numpy_helper.to_array(float_inits[float_node.input[2]]).astype(np.float64)
    else:
        b_float = np.zeros(w_float.shape[0])
    kernel = tuple(int(k) for k in w_float.shape[2:])
    pads = tuple(int(p) for p in a.get("pads", [0, 0, 0, 0]))
    geometry = (kernel, (pads[0], pads[1], pads[2], pads[3]), tuple(a.get("strides", [1, 1])),
                tuple(a.get("dilations", [1, 1])))
    return geometry, w_deq - w_float, b_float, w_float


def tap_geometry(node, weight_shape: Sequence[int]) -> TapGeometry | None:
    """Returns the TapGeometry of a 2-D Conv / ConvTranspose ``node`` with weights of ``weight_shape``, or None
    when the fast form cannot take it (not 2-D; a ConvTranspose with ``output_shape`` or ``auto_pad``)."""
    from onnx import helper

    if node.op_type not in _WEIGHTED or len(weight_shape) != 4:
        return None
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    transposed = node.op_type == "ConvTranspose"
    if transposed and (auto_pad != "NOTSET" or "output_shape" in a):
        return None
    pads = tuple(int(p) for p in a.get("pads", [0, 0, 0, 0]))
    return TapGeometry(tuple(int(k) for k in weight_shape[2:]), (pads[0], pads[1], pads[2], pads[3]),
                       tuple(int(v) for v in a.get("strides", [1, 1])),
                       tuple(int(v) for v in a.get("dilations", [1, 1])), transposed,
                       tuple(int(v) for v in a.get("output_padding", [0, 0])), auto_pad)


def float_tap_specs(float_model) -> dict[tuple[str, TapGeometry], tuple[str, TapGeometry]]:
    """Returns {(input tensor, geometry): (input tensor, geometry)} of every 2-D Conv / ConvTranspose of the float
    model with constant weights: the tap means the fast form may need, known before the int8 model exists."""
    inits = {t.name: t for t in float_model.graph.initializer}
    specs = {}
    for node in float_model.graph.node:
        if node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
            geometry = tap_geometry(node, list(inits[node.input[1]].dims))
            if geometry is not None:
                specs[(node.input[0], geometry)] = (node.input[0], geometry)
    return specs


def float_tap_accumulators(float_model) -> dict:
    """Returns {(tensor, geometry): (tensor, factory)} of :func:`float_tap_specs`: what a collection pass over the
    float model gathers (``fcnquant.calibrate.collect_with_extra``'s ``extra``) so that the fast form needs no pass
    of its own (``correct_biases(..., tap_means=...)``). ``factory(record)`` makes an empty TapMeans."""
    import functools

    from fcnquant.recover.bias_correction.taps import new_tap_means

    return {key: (tensor, functools.partial(new_tap_means, geometry))
            for key, (tensor, geometry) in float_tap_specs(float_model).items()}


def tap_layer(node, w_dq, inits, float_node, float_inits) -> TapLayer | None:
    """Returns the TapLayer of a quantized 2-D Conv or ConvTranspose (any group, explicit or automatic pads), or
    None when the fast form cannot correct it (weights or scales not constant, :func:`tap_geometry` None)."""
    from onnx import helper, numpy_helper

    if len(float_node.input) < 2 or float_node.input[1] not in float_inits:
        return None
    if w_dq.input[0] not in inits or w_dq.input[1] not in inits:
        return None
    w_float = numpy_helper.to_array(float_inits[float_node.input[1]]).astype(np.float64)
    geometry = tap_geometry(node, w_float.shape)
    if geometry is None:
        return None
    w_int = numpy_helper.to_array(inits[w_dq.input[0]]).astype(np.float64)
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
    zp = (numpy_helper.to_array(inits[w_dq.input[2]]).astype(np.float64)
          if len(w_dq.input) > 2 and w_dq.input[2] in inits else np.zeros_like(w_scale))
    if w_scale.ndim == 1 and w_scale.size > 1:  # per channel along the DequantizeLinear's axis (default 1)
        axis = next((x.i for x in w_dq.attribute if x.name == "axis"), 1) % 4
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        w_scale, zp = w_scale.reshape(shape), zp.reshape(shape)
    group = int(next((helper.get_attribute_value(x) for x in node.attribute if x.name == "group"), 1))
    channels = w_float.shape[1] * group if geometry.transposed else w_float.shape[0]
    if len(float_node.input) > 2 and float_node.input[2] in float_inits:
        b_float = numpy_helper.to_array(float_inits[float_node.input[2]]).astype(np.float64)
    else:
        b_float = np.zeros(channels)
    return TapLayer(geometry, group, (w_int - zp) * w_scale - w_float, b_float)


def dependency_levels(model, outputs: Sequence[str]) -> dict[str, int]:
    """Returns {tensor: level} for the ``outputs`` of nodes: 1 for those that depend on no other of them, else
    1 + the largest level among those they depend on (through any path of the graph)."""
    wanted = set(outputs)
    made_by = {o: n for n in model.graph.node for o in n.output}
    memo: dict[str, frozenset[str]] = {}

    def upstream(tensor: str) -> frozenset[str]:
        """The wanted tensors strictly upstream of ``tensor`` or equal to it (iterative DFS, no recursion limit)."""
        stack = [tensor]
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            node = made_by.get(t)
            pending = [i for i in (node.input if node is not None else []) if i and i not in memo]
            if pending:
                stack.extend(pending)
                continue
            acc: set[str] = set()
            for i in (node.input if node is not None else []):
                if i:
                    acc |= memo[i]
            if t in wanted:
                acc.add(t)
            memo[t] = frozenset(acc)
            stack.pop()
        return memo[tensor]

    level: dict[str, int] = {}
    for out in sorted(wanted, key=lambda o: len(upstream(o))):
        deps = upstream(out) - {out}
        level[out] = 1 + max((level[d] for d in deps), default=0)
    return level


def rounding_error_tensor(model, dq_output: str) -> str | None:
    """Adds to ``model`` (in place) nodes computing the rounding error of the activation Q/DQ pair that writes
    ``dq_output`` (``DQ(Q(x)) - x`` where ``|x|`` is within the grid's clip level, 0 where clipped); returns the
    new tensor's name, or None when ``dq_output`` is not written by such a pair with constant scalar scale."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    dq = made_by.get(dq_output)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in made_by:
        return None
    q = made_by[dq.input[0]]
    if q.op_type != "QuantizeLinear" or q.input[0] in inits or q.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[q.input[1]])
    if scale.size != 1 or len(q.input) < 3 or q.input[2] not in inits:
        return None
    zp = numpy_helper.to_array(inits[q.input[2]])
    info = np.iinfo(zp.dtype)
    lo = (float(info.min) + (1 if zp.dtype == np.int8 else 0) - float(zp)) * float(scale)
    hi = (float(info.max) - float(zp)) * float(scale)
    x, base = q.input[0], dq_output + "_bc_rounding"
    if base in made_by:  # another layer reading the same input added it already
        return base
    consts = {base + "_lo": np.asarray(lo, np.float32), base + "_hi": np.asarray(hi, np.float32),
              base + "_zero": np.asarray(0.0, np.float32)}
    for name, value in consts.items():
        if name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(value, name))
    model.graph.node.extend([
        helper.make_node("Sub", [dq_output, x], [base + "_diff"]),
        helper.make_node("GreaterOrEqual", [x, base + "_lo"], [base + "_ge"]),
        helper.make_node("LessOrEqual", [x, base + "_hi"], [base + "_le"]),
        helper.make_node("And", [base + "_ge", base + "_le"], [base + "_in"]),
        helper.make_node("Where", [base + "_in", base + "_diff", base + "_zero"], [base]),
    ])
    return base


def cut_at(model, outputs: list[str]):
    """Returns a copy of ``model`` whose only outputs are ``outputs`` (onnxruntime then drops every node they don't
    need)."""
    import onnx

    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.output[:]
    for name in outputs:
        cut.graph.output.append(onnx.ValueInfoProto(name=name))
    return cut


def apply_correction(init, scale: np.ndarray, err: np.ndarray) -> int:
    """Lowers the int32 initializer ``init`` by ``round(err / scale)``; returns how many values changed."""
    from onnx import numpy_helper

    old = numpy_helper.to_array(init)
    new = corrected_int32_bias(old, scale, err).reshape(old.shape)
    changed = int(np.count_nonzero(new != old))
    if changed:
        init.CopyFrom(numpy_helper.from_array(new, init.name))
    return changed
