"""Empirical bias correction of an int8 QDQ model: each quantized Conv's mean output shift per channel, cancelled.

Quantizing a Conv's weights shifts the mean of its output: ``E[W_q x] - E[W x] = (W_q - W) E[x]`` (Nagel et al.
2019). For every quantized Conv / ConvTranspose of the QDQ model (weights from an int8 DequantizeLinear, bias from
an int32 DequantizeLinear), over the calibration images, per output channel ``c``, ``e_c`` is measured and the
int32 bias lowered by ``round(e_c / s_b)`` (``fcnquant.recover.channel_means``). Two errors can be cancelled:

* ``error="weights"`` (default): the shift the layer's own weight rounding causes on the inputs it actually gets
  in the int8 model, ``e_c = mean over images and positions of conv(W_q - W, x_q)[c] + (b_q s_b - b)[c]``,
  computed exactly from the mean of every kernel window of ``x_q`` (``WindowMeans``; borders and padding
  included) and the bias's own rounding. The inputs ``x_q`` are
  the quantized model's own, with every earlier layer already corrected.
* ``error="accumulated"``: the whole mean error of the layer's output against the float model's
  (``mean(Conv_q(x_q)) - mean(Conv(x))``), which also absorbs the mean error accumulated before the layer.
  Measured on the demo models at npu-pow2 with per-tensor weights, it *lost* accuracy where the accumulated error
  is dominated by clipped activations (KL thresholds): a clipped tail lowers the mean at a few positions and the
  correction raises every position, turning zeros after the next ReLU into positives (fcn16s -0.69, fcn32s -2.2
  mIoU vs no correction); the weight-rounding shift is the part a bias can cancel without that side effect.
* ``error="weights+rounding"``: the ``"weights"`` shift plus the mean rounding error of the layer's int8 input
  passed through its float weights, ``conv(W, r)`` with ``r = DQ(Q(x)) - x`` where ``x`` is inside the grid and
  0 where it is clipped (clipping is left alone, as above), from the window means of ``r``. On power-of-two
  grids a residual stream's step can exceed what a branch adds to some channels, whose rounding then has a
  systematic sign (measured on fcn_r50_d8 at npu-pow2: per-channel mean rounding errors up to the error's RMS).
  Measured on fcn_r50_d8 (npu-pow2, per-tensor, tuning split): no gain over ``"weights"`` (output SNR 19.60 vs
  19.62 dB), so the flow does not use it; ``"accumulated"`` gained 0.8 dB there (``fcnquant.workflows.int8``, ``"auto"``).

Layers are corrected in dependency order: a layer's measurement waits until every quantized Conv it depends on
(through any path) is corrected. Layers that do not depend on each other (parallel branches: a ResNet's
downsample Conv beside its bottleneck, FCN's score Convs beside the deeper backbone) are measured and corrected
in the same pass, with the same result as one at a time, since neither's bias reaches the other's input.

Cost, in inference passes over the calibration images: ``D`` quantized passes (plus ``1`` float pass for the
``accumulated`` error, all layers' float means at once), ``D`` = the depth of the Conv dependency graph (``schedule="levels"``, default; ``L`` passes, one
per layer, with ``schedule="sequential"``, the reference). Each quantized pass runs only the part of the graph its
layers need (the model is cut at their outputs), so a pass over the first layers costs a fraction of an
inference: in total about ``D / 2`` full inferences per image.

Memory is constant in the number of images: per layer, a sum per channel (float64) and a count.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from fcnquant._io import as_model
from fcnquant.errors import FcnquantError
from fcnquant.recover.channel_means import ChannelMeans, WindowMeans, corrected_int32_bias, weight_shift_means

log = logging.getLogger(__name__)

SCHEDULES = ("levels", "sequential")
ERRORS = ("weights", "accumulated", "weights+rounding")
_WEIGHTED = ("Conv", "ConvTranspose")


@dataclass(frozen=True)
class LayerCorrection:
    """One corrected layer: the Conv node, its output tensor, and the size of the mean error it cancelled."""

    node: str
    output: str
    channels: int
    mean_abs_error: float  # mean over channels of |e_c| before correction (in the output's units)
    max_abs_error: float
    level: int  # the pass (1-based) that corrected it

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class BiasCorrectionResult:
    """The corrected QDQ model and what was done."""

    model: object  # onnx.ModelProto
    layers: tuple[LayerCorrection, ...]
    skipped: tuple[tuple[str, str], ...]  # (node, reason)
    schedule: str
    passes: int  # inference passes over the calibration images (float + quantized)
    images: int
    seconds: float

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (without the model)."""
        return {
            "schedule": self.schedule, "passes": self.passes, "images": self.images,
            "seconds": round(self.seconds, 3), "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"node": n, "reason": r} for n, r in self.skipped],
        }


@dataclass
class _Target:
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


def find_targets(qmodel, float_model, *, skip_logits: bool = True) -> tuple[list[_Target], list[tuple[str, str]]]:
    """Returns (correctable Conv layers of the QDQ model in graph order, [(node, reason)] of those skipped).

    ``skip_logits`` leaves out the class-scoring layers (``logit_layers``): see ``correct_biases``.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in qmodel.graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type in _WEIGHTED}
    made_by = {o: n for n in qmodel.graph.node for o in n.output}
    float_by_output = {n.output[0]: n for n in float_model.graph.node if n.op_type in _WEIGHTED}
    targets: list[_Target] = []
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
        targets.append(_Target(node.name, node.output[0], b_init.name, scale, float_node.output[0], node.input[0],
                               *_weight_error(node, w_src, inits, float_node, float_inits)))
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


def correct_biases(
    qmodel: str | os.PathLike[str] | object,
    float_model: str | os.PathLike[str] | object,
    dataset,
    ids: Sequence[str],
    preset=None,
    *,
    schedule: str = "levels",
    error: str = "weights",
    skip_logits: bool = True,
    batch_size: int = 1,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: bool = True,
) -> BiasCorrectionResult:
    """Returns the BiasCorrectionResult: a copy of the QDQ model ``qmodel`` whose int32 Conv biases cancel each
    layer's mean output error against ``float_model`` over the images ``ids`` of ``dataset``.

    ``qmodel`` / ``float_model`` are paths or ModelProtos (the QDQ model must come from the float model: same
    Conv output names, as ``fcnquant.quantize.quantize_model`` keeps them). ``preset``: as in
    ``fcnquant.calibrate.collect`` (None: the model's own; ``size``/``mean``/``std`` as there). ``schedule``: ``"levels"`` (independent layers share
    a pass) or ``"sequential"`` (one pass per layer); both give the same biases. ``skip_logits`` (default) leaves
    the class-scoring Convs as emitted: their mean error over all pixels is dominated by confidently classified
    ones, and shifting a class's logits everywhere to cancel it moved the contested pixels the wrong way
    (measured on the demo fcn16s at npu-pow2: -0.69 mIoU with its score Convs corrected, -0.20 without).
    """
    import onnx
    from onnx import numpy_helper

    if error not in ERRORS:
        raise FcnquantError(f"unknown bias-correction error {error!r}; choose from {', '.join(ERRORS)}")
    if schedule not in SCHEDULES:
        raise FcnquantError(f"unknown bias-correction schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    ids = list(ids)
    if not ids:
        raise FcnquantError("bias correction needs at least one calibration image")
    t0 = time.perf_counter()
    qm = onnx.ModelProto()
    qm.CopyFrom(as_model(qmodel))
    fm = as_model(float_model)
    targets, skipped = find_targets(qm, fm, skip_logits=skip_logits)
    for node, reason in skipped:
        log.info("bias correction skips %s: %s", node, reason)
    if not targets:
        log.warning("bias correction: no quantized Conv with an int32 bias in the model; nothing corrected")
        return BiasCorrectionResult(qm, (), tuple(skipped), schedule, 0, len(ids), time.perf_counter() - t0)

    names = [t.output for t in targets]
    runner = _PassRunner(dataset, ids, preset, batch_size, progress, dict(size=size, mean=mean, std=std))
    by_weights = error in ("weights", "weights+rounding")
    if by_weights:
        plain = [t.node for t in targets if t.delta_w is None]
        if plain:
            log.info("bias correction: %d layer(s) without a plain 2-D Conv geometry use their accumulated "
                     "error: %s", len(plain), ", ".join(plain[:5]))
    needs_float = [t.float_output for t in targets if not (by_weights and t.delta_w is not None)]
    float_means = runner.means(fm, needs_float, "bias correction: float") if needs_float else {}
    inits = {t.name: t for t in qm.graph.initializer}
    levels = dependency_levels(qm, [t.output for t in targets])
    groups = [[t for t in targets if levels[t.output] == lv] for lv in sorted(set(levels.values()))]
    if schedule == "sequential":
        groups = [[t] for t in targets]
    layers = []
    for k, group in enumerate(groups):
        accs = {}
        for t in group:
            if by_weights and t.delta_w is not None:
                kernel, pads, strides, dilations = t.geometry
                accs[(t.node, "in")] = (t.input, WindowMeans(kernel, pads, strides, dilations))
            else:
                accs[(t.node, "out")] = (t.output, ChannelMeans())
        cut_model = qm
        if error == "weights+rounding":
            cut_model = onnx.ModelProto()
            cut_model.CopyFrom(qm)
            for t in group:
                if (t.node, "in") in accs:
                    r = _rounding_error_tensor(cut_model, t.input)
                    if r is not None:
                        kernel, pads, strides, dilations = t.geometry
                        accs[(t.node, "r")] = (r, WindowMeans(kernel, pads, strides, dilations))
        tensors = list(dict.fromkeys(name for name, _ in accs.values()))
        runner.run(_cut(cut_model, tensors), accs, f"bias correction: pass {k + 1}/{len(groups)}")
        for t in group:
            if (t.node, "in") in accs:  # weight rounding on the int8 inputs, plus the bias's own rounding
                b_now = numpy_helper.to_array(inits[t.bias_init]).astype(np.float64) * t.bias_scale
                err = weight_shift_means(t.delta_w, accs[(t.node, "in")][1].mean) + b_now - t.float_bias
                if (t.node, "r") in accs:  # the mean rounding error of the layer's int8 input, through W:
                    # E[W_q x_q] - E[W x] = E[(W_q - W) x_q] + E[W (x_q - x)]
                    err = err + weight_shift_means(t.float_weight, accs[(t.node, "r")][1].mean)
            else:
                err = accs[(t.node, "out")][1].mean - float_means[t.float_output]
            _apply(inits[t.bias_init], t.bias_scale, err)
            layers.append(LayerCorrection(t.node, t.output, int(err.size), float(np.abs(err).mean()),
                                          float(np.abs(err).max()), k + 1))
    passes = len(groups) + (1 if needs_float else 0)
    seconds = time.perf_counter() - t0
    log.info("bias correction (%s): %d layers, %d passes over %d images in %.1f s", schedule, len(layers),
             passes, len(ids), seconds)
    return BiasCorrectionResult(qm, tuple(layers), tuple(skipped), schedule, passes, len(ids), seconds)


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


def _rounding_error_tensor(model, dq_output: str) -> str | None:
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


def _cut(model, outputs: list[str]):
    """Returns a copy of ``model`` whose only outputs are ``outputs`` (onnxruntime then drops every node they don't
    need)."""
    import onnx

    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.output[:]
    for name in outputs:
        cut.graph.output.append(onnx.ValueInfoProto(name=name))
    return cut


def _apply(init, scale: np.ndarray, err: np.ndarray) -> int:
    """Lowers the int32 initializer ``init`` by ``round(err / scale)``; returns how many values changed."""
    from onnx import numpy_helper

    old = numpy_helper.to_array(init)
    new = corrected_int32_bias(old, scale, err).reshape(old.shape)
    changed = int(np.count_nonzero(new != old))
    if changed:
        init.CopyFrom(numpy_helper.from_array(new, init.name))
    return changed


class _PassRunner:
    """Runs a model over the calibration images, streaming per-channel means of chosen tensors."""

    def __init__(self, dataset, ids: list[str], preset, batch_size: int, progress: bool, overrides: dict) -> None:
        self.dataset, self.ids, self.preset, self.overrides = dataset, ids, preset, overrides
        self.batch_size, self.progress = batch_size, progress

    def means(self, model, names: list[str], desc: str) -> dict[str, np.ndarray]:
        """Returns {tensor: per-channel mean} of ``names`` over the images."""
        accs = {n: (n, ChannelMeans()) for n in names}
        self.run(model, accs, desc)
        return {n: acc.mean for n, (_, acc) in accs.items()}

    def run(self, model, accs: dict, desc: str) -> None:
        """Runs ``model`` over the images, feeding each tensor to its accumulators ({key: (tensor, acc)})."""
        from tqdm import tqdm

        from fcnquant.calibrate.collect import make_collect_session
        from fcnquant.data import iter_batches, preset_for_session
        from fcnquant.runtime import input_spec, with_outputs

        names = list(dict.fromkeys(t for t, _ in accs.values()))
        session = make_collect_session(with_outputs(model, names).SerializeToString())
        input_name, shape = input_spec(session)
        fetch = [n for n in names if n != input_name]
        preset = preset_for_session(session, self.preset, **self.overrides)
        batch = self.batch_size if shape[0] is None else shape[0]
        bar = tqdm(total=len(self.ids), desc=desc, unit="img", disable=None if self.progress else True, leave=False)
        try:
            for b in iter_batches(self.dataset, preset, self.ids, batch, with_masks=False):
                images = np.ascontiguousarray(b.images, np.float32)
                n = images.shape[0]
                if shape[0] is not None and n < shape[0]:
                    images = np.concatenate([images, np.repeat(images[-1:], shape[0] - n, axis=0)])
                values = dict(zip(fetch, session.run(fetch, {input_name: images}))) if fetch else {}
                values[input_name] = images
                for tensor, acc in accs.values():
                    acc.update(values[tensor][:n])
                bar.update(n)
        finally:
            bar.close()
