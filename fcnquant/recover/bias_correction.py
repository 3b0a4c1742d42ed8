"""Empirical bias correction of an int8 QDQ model: each quantized Conv's mean output error per channel, cancelled.

Quantizing a Conv's weights and inputs shifts the mean of its output (``E[W_q x_q] != E[W x]``); the shift passes
through every later layer. For every quantized Conv / ConvTranspose of the QDQ model (weights from an int8
DequantizeLinear, bias from an int32 DequantizeLinear), over the calibration images, per output channel ``c``::

    e_c = mean over images and positions of (quantized model's Conv output - float model's Conv output)

and the int32 bias is lowered by ``round(e_c / s_b)`` (``fcnquant.recover.channel_means``). The quantized output is
the Conv as the quantized model computes it (fed the quantized model's own inputs), so each layer also absorbs
the mean error accumulated before it: the result is *layer-wise* correction, as in Nagel et al. 2019 /
NNCF's BiasCorrection, not the "fast" variant that feeds each layer float inputs.

Layers are corrected in dependency order: a layer's measurement waits until every quantized Conv it depends on
(through any path) is corrected. Layers that do not depend on each other (parallel branches: a ResNet's
downsample Conv beside its bottleneck, FCN's score Convs beside the deeper backbone) are measured and corrected
in the same pass, with the same result as one at a time, since neither's bias reaches the other's input.

Cost, in inference passes over the calibration images: ``1`` float pass (all layers' float means at once) ``+ D``
quantized passes, ``D`` = the depth of the Conv dependency graph (``schedule="levels"``, default; ``L`` passes, one
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
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnquant._io import load_onnx
from fcnquant.errors import FcnquantError, ModelError
from fcnquant.recover.channel_means import ChannelMeans, corrected_int32_bias

log = logging.getLogger(__name__)

SCHEDULES = ("levels", "sequential")
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


def find_targets(qmodel, float_model) -> tuple[list[_Target], list[tuple[str, str]]]:
    """Returns (correctable Conv layers of the QDQ model in graph order, [(node, reason)] of those skipped)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in qmodel.graph.initializer}
    made_by = {o: n for n in qmodel.graph.node for o in n.output}
    float_outputs = {n.output[0] for n in float_model.graph.node if n.op_type in _WEIGHTED}
    targets: list[_Target] = []
    skipped: list[tuple[str, str]] = []
    seen_bias: set[str] = set()
    for node in qmodel.graph.node:
        if node.op_type not in _WEIGHTED:
            continue
        w_src = made_by.get(node.input[1]) if len(node.input) > 1 else None
        if w_src is None or w_src.op_type != "DequantizeLinear":
            continue  # a float layer (excluded, or outside the int8 region): nothing quantized to correct
        if node.output[0] not in float_outputs:
            skipped.append((node.name, "no Conv with the same output tensor in the float model"))
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
        targets.append(_Target(node.name, node.output[0], b_init.name, scale))
    return targets, skipped


def correct_biases(
    qmodel: str | os.PathLike[str] | object,
    float_model: str | os.PathLike[str] | object,
    dataset,
    ids: Sequence[str],
    preset=None,
    *,
    schedule: str = "levels",
    batch_size: int = 1,
    progress: bool = True,
) -> BiasCorrectionResult:
    """Returns the BiasCorrectionResult: a copy of the QDQ model ``qmodel`` whose int32 Conv biases cancel each
    layer's mean output error against ``float_model`` over the images ``ids`` of ``dataset``.

    ``qmodel`` / ``float_model`` are paths or ModelProtos (the QDQ model must come from the float model: same
    Conv output names, as ``fcnquant.quantize.quantize_model`` keeps them). ``preset``: as in
    ``fcnquant.calibrate.collect`` (None: the model's own). ``schedule``: ``"levels"`` (independent layers share
    a pass) or ``"sequential"`` (one pass per layer); both give the same biases.
    """
    import onnx

    if schedule not in SCHEDULES:
        raise FcnquantError(f"unknown bias-correction schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    ids = list(ids)
    if not ids:
        raise FcnquantError("bias correction needs at least one calibration image")
    t0 = time.perf_counter()
    qm = onnx.ModelProto()
    qm.CopyFrom(_as_model(qmodel))
    fm = _as_model(float_model)
    targets, skipped = find_targets(qm, fm)
    for node, reason in skipped:
        log.info("bias correction skips %s: %s", node, reason)
    if not targets:
        log.warning("bias correction: no quantized Conv with an int32 bias in the model; nothing corrected")
        return BiasCorrectionResult(qm, (), tuple(skipped), schedule, 0, len(ids), time.perf_counter() - t0)

    names = [t.output for t in targets]
    runner = _PassRunner(dataset, ids, preset, batch_size, progress)
    float_means = runner.means(fm, names, "bias correction: float")
    inits = {t.name: t for t in qm.graph.initializer}
    levels = dependency_levels(qm, [t.output for t in targets])
    groups = [[t for t in targets if levels[t.output] == lv] for lv in sorted(set(levels.values()))]
    if schedule == "sequential":
        groups = [[t] for t in targets]
    layers = []
    for k, group in enumerate(groups):
        q_means = runner.means(_cut(qm, [t.output for t in group]), [t.output for t in group],
                               f"bias correction: pass {k + 1}/{len(groups)}")
        for t in group:
            err = q_means[t.output] - float_means[t.output]
            _apply(inits[t.bias_init], t.bias_scale, err)
            layers.append(LayerCorrection(t.node, t.output, int(err.size), float(np.abs(err).mean()),
                                          float(np.abs(err).max()), k + 1))
    passes = 1 + len(groups)
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


def _as_model(model):
    if isinstance(model, (str, os.PathLike)):
        return load_onnx(Path(model))
    if not hasattr(model, "graph"):
        raise ModelError(f"expected a model path or an onnx.ModelProto, got {type(model).__name__}")
    return model


class _PassRunner:
    """Runs a model over the calibration images, streaming per-channel means of chosen tensors."""

    def __init__(self, dataset, ids: list[str], preset, batch_size: int, progress: bool) -> None:
        self.dataset, self.ids, self.preset = dataset, ids, preset
        self.batch_size, self.progress = batch_size, progress

    def means(self, model, names: list[str], desc: str) -> dict[str, np.ndarray]:
        from tqdm import tqdm

        from fcnquant.calibrate.collect import make_collect_session
        from fcnquant.data import iter_batches, preset_for_session
        from fcnquant.runtime import input_spec, with_outputs

        session = make_collect_session(with_outputs(model, names).SerializeToString())
        input_name, shape = input_spec(session)
        preset = preset_for_session(session, self.preset)
        batch = self.batch_size if shape[0] is None else shape[0]
        acc = {n: ChannelMeans() for n in names}
        bar = tqdm(total=len(self.ids), desc=desc, unit="img", disable=None if self.progress else True, leave=False)
        try:
            for b in iter_batches(self.dataset, preset, self.ids, batch, with_masks=False):
                images = np.ascontiguousarray(b.images, np.float32)
                n = images.shape[0]
                if shape[0] is not None and n < shape[0]:
                    images = np.concatenate([images, np.repeat(images[-1:], shape[0] - n, axis=0)])
                outs = session.run(names, {input_name: images})
                for name, x in zip(names, outs):
                    acc[name].update(x[:n])
                bar.update(n)
        finally:
            bar.close()
        return {n: a.mean for n, a in acc.items()}
