"""Power-of-two activation scales chosen by the int8 model's output error (npu-pow2), not each tensor's own.

``pow2_rounding="error"`` picks, per activation, the neighbouring power of two of the method's scale with the smaller
expected squared error *of that tensor* (``fcnquant.calibrate.pow2``). What matters is the error that reaches the
logits: a residual stream that several blocks read, or a tensor whose clipped tail decides a class, weighs more
than its own squared error says. :func:`search_activation_scales`:

1. lists the activation scales of an emitted QDQ model (:func:`scale_groups`): one group per scale initializer of a
   ``QuantizeLinear`` (a MaxPool output shares its source's), with its two candidates ``2**ceil(log2(T / 127))``
   and half of it (``T = max(|lo|, |hi|)`` of the table entry that sets it) and the one the table chose;
2. turns those initializers into graph inputs, so one onnxruntime session evaluates any choice of scales;
3. runs the float model once on the calibration images and keeps its outputs; the error of a choice is the mean
   squared difference of the int8 model's outputs from them;
4. searches the choices one group at a time (:func:`~fcnquant.recover.exponent_search.coordinate_descent`,
   topological order) and returns a calibration table with the chosen scales, to emit the model again.

Biases keep their float value while searching (their int32 scale ``s_in * s_w`` follows on re-emission). Cost:
``1 + sweeps * groups`` inferences of each of ``images`` images (fcn_r50_d8: 78 groups).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from fcnquant._io import as_model
from fcnquant.calibrate.qparams import get_target, pow2_ceil
from fcnquant.errors import FcnquantError, ModelError
from fcnquant.recover.exponent_search import SearchResult, coordinate_descent

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 16
#: how the outputs' difference is scored: mean squared error of the logits, or the mean KL divergence of the
#: quantized model's class probabilities (softmax over axis 1) from the float model's
METRICS = ("mse", "kl")


@dataclass(frozen=True)
class ScaleGroup:
    """One activation scale of the QDQ model: its initializer, the tensors it quantizes, the table entries that
    set it, its candidate scales (coarse first) and the index of the one the model has."""

    init: str
    tensors: tuple[str, ...]
    entries: tuple[str, ...]
    candidates: tuple[float, ...]
    initial: int


@dataclass(frozen=True)
class ScaleChange:
    """One scale the search changed: the initializer, the table entries, the old and new scale."""

    init: str
    entries: tuple[str, ...]
    old: float
    new: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the change as plain JSON types."""
        return {"init": self.init, "entries": list(self.entries), "old": self.old, "new": self.new}


@dataclass(frozen=True)
class ScaleSearchResult:
    """The table with the chosen scales, the changes, the output error (MSE) before and after, and the cost."""

    table: Any = None
    changes: tuple[ScaleChange, ...] = ()
    groups: int = 0
    error_before: float = 0.0
    error_after: float = 0.0
    signal: float = 0.0  # mean square of the float outputs (for SNR)
    images: int = 0
    evaluations: int = 0
    seconds: float = 0.0

    def snr_db(self) -> tuple[float, float]:
        """Returns the output SNR in dB (before, after): 10 log10(signal / error)."""
        def db(e: float) -> float:
            return 10.0 * math.log10(self.signal / e) if e > 0 and self.signal > 0 else float("inf")

        return db(self.error_before), db(self.error_after)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result (without the table) as plain JSON types."""
        before, after = self.snr_db()
        return {"groups": self.groups, "changed": len(self.changes), "images": self.images,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3),
                "output_snr_db": {"before": round(before, 4), "after": round(after, 4)},
                "changes": [c.to_dict() for c in self.changes]}


def scale_groups(qmodel, table, inherited: dict[str, str] | None = None, extra: int = 0) -> list[ScaleGroup]:
    """Returns the searchable activation scales of the QDQ ``qmodel`` emitted from ``table`` (npu-pow2), in
    graph order.

    A group is a scalar scale initializer read by ``QuantizeLinear`` nodes of activations (not weights); its
    entries are the table tensors that set it: the tensor itself, or for an inherited one its source
    (``inherited``: ``fcnquant.calibrate.tensors.inherited_scales`` of the float model; None: none).
    ``extra`` adds that many powers of two beyond each neighbour (``extra=1``: ``2 s_up`` and ``s_up / 4`` too).
    Groups whose scale is not one of the candidates (e.g. clamped to the minimum scale) are left out.
    """
    from onnx import numpy_helper

    t = get_target(table.target)
    if not t.pow2:
        raise FcnquantError(f"the scale search is for power-of-two targets; the table is for {table.target}")
    inits = {i.name: i for i in qmodel.graph.initializer}
    inherited = dict(inherited or {})
    order: list[str] = []
    tensors: dict[str, list[str]] = {}
    for node in qmodel.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        if numpy_helper.to_array(inits[node.input[1]]).size != 1:
            continue
        if node.input[1] not in tensors:
            order.append(node.input[1])
        tensors.setdefault(node.input[1], []).append(node.input[0])
    groups = []
    for init in order:
        names = tensors[init]
        entries = tuple(dict.fromkeys(_source(n, inherited) for n in names if _source(n, inherited) in table.tensors))
        if not entries:
            continue
        e = table.tensors[entries[0]]
        amax = max(abs(e.lo), abs(e.hi))
        if not amax > 0:
            continue
        up = pow2_ceil(amax / t.qmax)
        cands = tuple(up * 2.0 ** k for k in range(extra, -2 - extra, -1))
        now = float(numpy_helper.to_array(inits[init]).reshape(()))
        if now not in cands or any(float(table.tensors[x].scale) != now for x in entries):
            continue
        groups.append(ScaleGroup(init, tuple(names), entries, cands, cands.index(now)))
    return groups


def _source(name: str, inherited: dict[str, str]) -> str:
    seen = set()
    while name in inherited and name not in seen:
        seen.add(name)
        name = inherited[name]
    return name


def with_scale_inputs(qmodel, inits: Sequence[str]):
    """Returns a copy of ``qmodel`` whose scalar initializers ``inits`` are float graph inputs instead."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    wanted = set(inits)
    kept = [i for i in m.graph.initializer if i.name not in wanted]
    found = {i.name for i in m.graph.initializer} & wanted
    if found != wanted:
        raise ModelError(f"no initializer {sorted(wanted - found)[:3]} in the model")
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    for name in inits:
        m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
    return m


def search_activation_scales(
    qmodel: str | os.PathLike[str] | object,
    float_model: str | os.PathLike[str] | object,
    table,
    dataset,
    ids: Sequence[str],
    preset=None,
    *,
    images: int | None = DEFAULT_IMAGES,
    sweeps: int = 2,
    tol: float = 1e-3,
    metric: str = "mse",
    extra: int = 0,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ScaleSearchResult:
    """Returns the ScaleSearchResult of choosing each activation's power-of-two scale of the QDQ ``qmodel``
    (emitted from ``float_model`` and ``table``) by the model's output error on calibration images.

    ``extra``: candidates beyond the two neighbours (:func:`scale_groups`). ``metric``: one of ``METRICS``.
    ``images``: how many of ``ids`` to use (spread evenly over them; None: all). ``sweeps`` / ``tol``: as in
    :func:`~fcnquant.recover.exponent_search.coordinate_descent`. The result's ``table`` is ``table`` with the
    chosen scales; emit it with ``fcnquant.quantize.quantize_model`` as before.
    """
    if metric not in METRICS:
        raise FcnquantError(f"unknown scale-search metric {metric!r}; choose from {', '.join(METRICS)}")
    t0 = time.perf_counter()
    qm = as_model(qmodel)
    fm = as_model(float_model)
    from fcnquant.calibrate.tensors import inherited_scales

    groups = scale_groups(qm, table, inherited_scales(fm), extra)
    ids = _spread(list(ids), images)
    if not ids:
        raise FcnquantError("the scale search needs at least one calibration image")
    if not groups:
        return ScaleSearchResult(table, (), 0, 0.0, 0.0, 0.0, len(ids), 0, time.perf_counter() - t0)
    batches = _load_images(fm, dataset, ids, preset, dict(size=size, mean=mean, std=std))
    fsess = _session(fm)
    outputs = [o.name for o in fsess.get_outputs()]
    ref = [fsess.run(outputs, {fsess.get_inputs()[0].name: x}) for x in batches]
    if metric == "kl":
        ref_logp = [[_log_softmax(np.asarray(r, np.float64)) for r in outs] for outs in ref]
    signal = float(np.mean([np.mean(np.square(np.asarray(r, np.float64))) for outs in ref for r in outs]))
    searchable = with_scale_inputs(qm, [g.init for g in groups])
    qsess = _session(searchable)
    input_name = next(i.name for i in qsess.get_inputs() if i.name not in {g.init for g in groups})

    def error(choice: Sequence[int]) -> float:
        feeds = {g.init: np.asarray(g.candidates[c], np.float32) for g, c in zip(groups, choice)}
        total = 0.0
        for k, (x, want) in enumerate(zip(batches, ref)):
            feeds[input_name] = x
            got = qsess.run(outputs, feeds)
            if metric == "kl":
                total += float(np.mean([kl_divergence(lp, _log_softmax(np.asarray(a, np.float64)))
                                        for a, lp in zip(got, ref_logp[k])]))
            else:
                total += float(np.mean([np.mean(np.square(np.asarray(a, np.float64) - b))
                                        for a, b in zip(got, want)]))
        return total / len(batches)

    res: SearchResult = coordinate_descent(error, [len(g.candidates) for g in groups], [g.initial for g in groups],
                                           sweeps=sweeps, tol=tol)
    tensors = dict(table.tensors)
    changes = []
    for g, c in zip(groups, res.choice):
        if c == g.initial:
            continue
        new = g.candidates[c]
        for name in g.entries:
            tensors[name] = replace(tensors[name], scale=new)
        changes.append(ScaleChange(g.init, g.entries, g.candidates[g.initial], new))
    new_table = replace(table, tensors=tensors)
    new_table.validate()
    seconds = time.perf_counter() - t0
    out = ScaleSearchResult(new_table, tuple(changes), len(groups), res.error_before, res.error_after, signal,
                            len(ids), res.evaluations, seconds)
    before, after = out.snr_db()
    log.info("scale search: %d of %d activation scales changed, output SNR %.2f -> %.2f dB (%d evaluations of %d "
             "images, %.1f s)", len(changes), len(groups), before, after, res.evaluations, len(ids), seconds)
    return out


def output_error(
    qmodels: Sequence[str | os.PathLike[str] | object],
    float_model: str | os.PathLike[str] | object,
    dataset,
    ids: Sequence[str],
    preset=None,
    *,
    images: int | None = DEFAULT_IMAGES,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[float]:
    """Returns, per model of ``qmodels``, the mean squared difference of its outputs from ``float_model``'s over
    ``images`` of ``ids`` (spread evenly; None: all): the error :func:`search_activation_scales` minimises."""
    fm = as_model(float_model)
    batches = _load_images(fm, dataset, _spread(list(ids), images), preset, dict(size=size, mean=mean, std=std))
    if not batches:
        raise FcnquantError("the output error needs at least one image")
    fsess = _session(fm)
    name = fsess.get_inputs()[0].name
    outputs = [o.name for o in fsess.get_outputs()]
    ref = [fsess.run(outputs, {name: x}) for x in batches]
    out = []
    for qmodel in qmodels:
        qsess = _session(as_model(qmodel))
        total = 0.0
        for x, want in zip(batches, ref):
            got = qsess.run(outputs, {qsess.get_inputs()[0].name: x})
            total += float(np.mean([np.mean(np.square(np.asarray(a, np.float64) - b)) for a, b in zip(got, want)]))
        out.append(total / len(batches))
    return out


def kl_divergence(logp: np.ndarray, logq: np.ndarray) -> float:
    """Returns the mean over positions of KL(p || q) for log-probabilities over axis 1 (classes)."""
    return float(np.mean(np.sum(np.exp(logp) * (logp - logq), axis=1)))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _spread(ids: list[str], n: int | None) -> list[str]:
    """Returns ``n`` of ``ids`` spread evenly over the list (all of them when n is None or >= len)."""
    if n is None or n >= len(ids):
        return ids
    if n < 1:
        return []
    picks = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in dict.fromkeys(picks.tolist())]


def _session(model):
    from fcnquant.runtime import make_session

    return make_session(model.SerializeToString())


def _load_images(fm, dataset, ids: list[str], preset, overrides: dict) -> list[np.ndarray]:
    """Returns the preprocessed images, one float32 NCHW batch each (padded to a fixed batch dimension)."""
    from fcnquant.data import iter_batches, preset_for_session
    from fcnquant.runtime import input_spec

    session = _session(fm)
    _, shape = input_spec(session)
    pre = preset_for_session(session, preset, **overrides)
    out = []
    for b in iter_batches(dataset, pre, ids, 1, with_masks=False):
        x = np.ascontiguousarray(b.images, np.float32)
        if shape[0] is not None and x.shape[0] < shape[0]:
            x = np.concatenate([x, np.repeat(x[-1:], shape[0] - x.shape[0], axis=0)])
        out.append(x)
    return out
