"""Running an :class:`~fcnquant.emulate.program.IntProgram` on a batch of images with a target's arithmetic."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from fcnquant.emulate import arith
from fcnquant.emulate.program import IntProgram, QTensor, Step
from fcnquant.emulate.target import Arithmetic

_NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}


@dataclass
class Emulated:
    """What one emulated run produced: the integer tensors (by QuantizeLinear output name) and the outputs."""

    values: dict[str, np.ndarray]
    outputs: list[np.ndarray]  # float64 (float steps at full accumulator precision, or dequantized integers)
    overflows: dict[str, int] = field(default_factory=dict)  # step -> accumulator values that wrapped


def quantize_input(x: np.ndarray, t: QTensor) -> np.ndarray:
    """Returns the integer input: ``clip(round_half_even(x / scale) + zp)`` in float32, as QuantizeLinear does
    (the host quantizes the image; the chip's arithmetic starts after it)."""
    qmin, qmax = t.qrange
    q = np.rint(np.asarray(x, np.float32) / np.float32(t.scale)) + t.zero_point
    return np.clip(q, qmin, qmax).astype(_NUMPY[t.dtype])


def run_program(prog: IntProgram, x: np.ndarray, arithmetic: Arithmetic, keep: bool = True) -> Emulated:
    """Returns the Emulated run of ``prog`` on the float image batch ``x`` (N, C, H, W).

    ``keep=False`` drops each integer tensor once no later step reads it (only the outputs are returned then).
    """
    values = {prog.input.name: quantize_input(x, prog.input)}
    last_use: dict[str, int] = {}
    for k, s in enumerate(prog.steps):
        for t in s.inputs:
            last_use[t.name] = k
    floats: dict[str, np.ndarray] = {}
    overflows: dict[str, int] = {}
    kept_outputs = set(prog.outputs)
    for k, s in enumerate(prog.steps):
        acc, acc_scale = _accumulate(s, values, arithmetic)
        acc, over = arith.wrap(acc, arithmetic.accumulator_bits)
        if over:
            overflows[s.name] = over
        if s.out is None:
            if s.relu:
                acc = np.maximum(acc, 0)
            floats[s.output] = np.asarray(acc, np.float64) * _channel(acc_scale, acc.ndim)
        else:
            values[s.output] = _requantize(acc, acc_scale, s, arithmetic)
        if not keep:
            for t in s.inputs:
                if last_use.get(t.name) == k and t.name not in kept_outputs:
                    values.pop(t.name, None)
    outs = [floats[o] if o in floats else _dequantize(values[o], prog.tensors[o]) for o in prog.outputs]
    return Emulated(values, outs, overflows)


def _channel(scale, ndim: int) -> np.ndarray:
    scale = np.atleast_1d(np.asarray(scale, np.float64))
    return scale.reshape([1, -1] + [1] * (ndim - 2)) if scale.size > 1 else scale.reshape(())


def _dequantize(q: np.ndarray, t: QTensor) -> np.ndarray:
    return (q.astype(np.float64) - t.zero_point) * t.scale


def _requantize(acc: np.ndarray, acc_scale, s: Step, a: Arithmetic) -> np.ndarray:
    """Returns the step's integer output: the accumulator times acc_scale / out scale, rounded, saturated."""
    out = s.out
    qmin, qmax = out.qrange
    ratios = np.atleast_1d(np.asarray(acc_scale, np.float64)) / out.scale
    q = arith.requantize(acc, ratios, a.rounding, qmin - out.zero_point, qmax - out.zero_point,
                         relu=s.relu)
    return (q + out.zero_point if out.zero_point else q).astype(_NUMPY[out.dtype])


def _centered(values: dict[str, np.ndarray], t: QTensor) -> np.ndarray:
    """Returns the integer tensor ``t`` minus its zero point (int32; the stored integers when it is 0)."""
    v = values[t.name]
    return v.astype(np.int32) - t.zero_point if t.zero_point else v


def _accumulate(s: Step, values: dict[str, np.ndarray], a: Arithmetic) -> tuple[np.ndarray, object]:
    """Returns (integer accumulator, its scale: one float or one per output channel) of step ``s``."""
    if s.op in ("Conv", "ConvTranspose"):
        return _conv(s, values)
    if s.op in ("Add", "Concat"):
        return _align(s, values, a)
    t = s.inputs[0]
    x = _centered(values, t)
    if s.op == "MaxPool":
        pads = tuple(s.attrs.get("pads", (0, 0, 0, 0)))
        return arith.maxpool(x, tuple(s.attrs["kernel_shape"]), tuple(s.attrs.get("strides", (1, 1))),
                             (pads[0], pads[1], pads[2], pads[3]), tuple(s.attrs.get("dilations", (1, 1))),
                             int(s.attrs.get("ceil_mode", 0))), t.scale
    if s.op == "Relu":
        return np.maximum(x, 0).astype(np.int64), t.scale
    if s.op == "Pad":
        p = s.attrs["pad_values"]
        r = len(p) // 2
        return np.pad(x, [(p[i], p[i + r]) for i in range(r)]).astype(np.int64), t.scale
    if s.op == "Resize":
        return _resize(s, x, t, a)
    raise AssertionError(s.op)


def _conv(s: Step, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    t = s.inputs[0]
    x = _centered(values, t)
    at = s.attrs
    pads = tuple(at.get("pads", (0, 0, 0, 0)))
    kw = dict(strides=tuple(at.get("strides", (1, 1))), pads=(pads[0], pads[1], pads[2], pads[3]),
              dilations=tuple(at.get("dilations", (1, 1))), group=int(at.get("group", 1)))
    if s.op == "Conv":
        acc = arith.conv_acc(x, s.weight, **kw)
    else:
        acc = arith.conv_transpose_acc(x, s.weight, output_padding=tuple(at.get("output_padding", (0, 0))), **kw)
    acc += s.bias.reshape(1, -1, 1, 1)
    scale = t.scale * s.weight_scale
    if s.op == "ConvTranspose" and scale.size > 1 and scale.size != acc.shape[1]:
        scale = np.tile(scale, acc.shape[1] // scale.size)
    return acc, scale


def _align(s: Step, values: dict[str, np.ndarray], a: Arithmetic) -> tuple[np.ndarray, float]:
    """Add / Concat: each input times ``M_i = round(ratio_i * 2**n)`` (ratio_i = its scale / the output's), summed
    or joined, in units of ``out scale * 2**-n``. Power-of-two ratios make every M_i an exact power of two with
    the smallest such n: the inputs are aligned by left shifts onto the finest input's grid."""
    out_scale = s.out.scale if s.out is not None else min(t.scale for t in s.inputs)
    ratios = [t.scale / out_scale for t in s.inputs]
    exps = [arith.pow2_exponent(r) for r in ratios]
    if all(e is not None for e in exps):
        n = max(0, -min(exps))  # the finest input's grid: every M_i an exact power of two
    else:  # M_i of as many bits as keep each product two bits inside the accumulator
        in_bits = max(np.iinfo(_NUMPY[t.dtype]).bits for t in s.inputs)
        n = a.accumulator_bits - 2 - in_bits - int(np.ceil(np.log2(max(ratios))))
    mults = [int(round(Fraction(r) * 2 ** n)) for r in ratios]
    parts = [_centered(values, t).astype(np.int64) * m for t, m in zip(s.inputs, mults)]
    if s.op == "Add":
        acc = parts[0]
        for p in parts[1:]:
            acc = acc + p
    else:
        acc = np.concatenate(parts, axis=int(s.attrs.get("axis", 1)))
    return acc, out_scale * 2.0 ** -n


def _resize(s: Step, x: np.ndarray, t: QTensor, a: Arithmetic) -> tuple[np.ndarray, float]:
    g = s.attrs["resize"]
    h, w = x.shape[2:]
    if g["sizes"] is not None:
        (ho, wo), scales = g["sizes"], (None, None)
    else:
        scales = g["scales"]
        ho, wo = int(h * scales[0]), int(w * scales[1])
    if g["mode"] == "nearest":
        rows = _nearest(h, ho, g, scales[0])
        cols = _nearest(w, wo, g, scales[1])
        return x[:, :, rows][:, :, :, cols].astype(np.int64), t.scale
    bits = a.resize_bits
    rows = arith.resize_axis(h, ho, g["coord"], scales[0], bits)
    cols = arith.resize_axis(w, wo, g["coord"], scales[1], bits)
    return arith.resize_acc(x, rows, cols), t.scale * 2.0 ** (-2 * bits)


def _nearest(n_in: int, n_out: int, g: dict, scale) -> np.ndarray:
    """Returns the input index of each output index of a nearest Resize (ONNX coordinate and rounding rules)."""
    scale = Fraction(n_out, n_in) if scale is None else scale
    idx = []
    for i in range(n_out):
        coord = g["coord"]
        if coord == "align_corners":
            x = Fraction(i * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        elif coord in ("half_pixel", "pytorch_half_pixel"):
            x = (i + Fraction(1, 2)) / scale - Fraction(1, 2)
        else:
            x = i / scale
        rule = g["nearest"]
        if rule == "floor":
            j = x.__floor__()
        elif rule == "ceil":
            j = x.__ceil__()
        elif rule == "round_prefer_ceil":
            j = (x + Fraction(1, 2)).__floor__()
        else:  # round_prefer_floor
            j = (x - Fraction(1, 2)).__ceil__()
        idx.append(min(max(j, 0), n_in - 1))
    return np.array(idx, np.int64)
