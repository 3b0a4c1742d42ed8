"""Power-of-two activation scales chosen by the int8 model's output error (npu-pow2), not each tensor's own.

``pow2_rounding="error"`` picks, per activation, the neighbouring power of two of the method's scale with the
smaller expected squared error *of that tensor* (``fcnquant.calibrate.pow2``). What matters is the error that
reaches the logits: a residual stream that several blocks read, or a tensor whose clipped tail decides a class,
weighs more than its own squared error says. :func:`search_activation_scales`:

1. lists the activation scales of an emitted QDQ model (:func:`~fcnquant.recover.scale_search.groups.scale_groups`):
   one group per scale initializer of a ``QuantizeLinear`` (a MaxPool output shares its source's), with its two
   candidates ``2**ceil(log2(T / 127))`` and half of it (``T = max(|lo|, |hi|)`` of the table entry that sets it)
   and the one the table chose;
2. turns those initializers into graph inputs, so one onnxruntime session evaluates any choice of scales;
3. runs the float model once on the calibration images and keeps its outputs; the error of a choice is the mean
   squared difference of the int8 model's outputs from them;
4. searches the choices one group at a time
   (:func:`~fcnquant.recover.scale_search.exponent_search.coordinate_descent`, topological order) and returns a
   calibration table with the chosen scales, to emit the model again.

Biases keep their float value while searching (their int32 scale ``s_in * s_w`` follows on re-emission). Cost:
``1 + sweeps * groups`` inferences of each of ``images`` images (fcn_r50_d8: 78 groups).

Every inference pass is a :meth:`~fcnquant.execute.Executor.map` over the images: :func:`reference_shard` (the
float outputs, once) and :func:`error_shard` (one per evaluated choice, with the float outputs as shared values
per image). The error of a choice is the per-image errors added in image order, so it is the same number on any
number of shards.
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
from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import FcnquantError
from fcnquant.execute import Executor, LocalExecutor, RunConfig, ShardContext, image_batches
from fcnquant.recover.scale_search.exponent_search import SearchResult, coordinate_descent
from fcnquant.recover.scale_search.groups import ScaleGroup, scale_groups, with_scale_inputs

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 16
#: how the outputs' difference is scored: mean squared error of the logits, or the mean KL divergence of the
#: quantized model's class probabilities (softmax over axis 1) from the float model's
METRICS = ("mse", "kl")


@dataclass(frozen=True)
class ScaleSearchOptions:
    """``images``: how many of the calibration images to use (spread evenly over them; None: all). ``sweeps`` /
    ``tol``: as in :func:`~fcnquant.recover.scale_search.exponent_search.coordinate_descent`. ``metric``: one of
    :data:`METRICS`. ``extra``: candidates beyond the two neighbouring powers of two
    (:func:`~fcnquant.recover.scale_search.groups.scale_groups`)."""

    images: int | None = DEFAULT_IMAGES
    sweeps: int = 2
    tol: float = 1e-3
    metric: str = "mse"
    extra: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise FcnquantError(f"unknown scale-search metric {self.metric!r}; choose from {', '.join(METRICS)}")


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


def search_activation_scales(
    qmodel: str | os.PathLike[str] | object,
    float_model: str | os.PathLike[str] | object,
    table,
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: ScaleSearchOptions | None = None,
) -> ScaleSearchResult:
    """Returns the ScaleSearchResult of choosing each activation's power-of-two scale of the QDQ ``qmodel``
    (emitted from ``float_model`` and ``table``) by the model's output error on calibration images.

    ``data``: a :class:`~fcnquant.data.DataConfig` (or a dataset root / open ``Dataset``) with the calibration
    ``ids`` (else a seeded selection of ``num_images``) and the preprocessing (default: the float model's own).
    ``run``: the executor the inference passes run on. ``options``: :class:`ScaleSearchOptions`. The result's
    ``table`` is ``table`` with the chosen scales; emit it with ``fcnquant.quantize.quantize_model`` as before.
    """
    from fcnquant.calibrate.tensors import inherited_scales

    options = options or ScaleSearchOptions()
    executor = RunConfig.of(run).resolved()
    t0 = time.perf_counter()
    qm = as_model(qmodel)
    fm = as_model(float_model)
    groups = scale_groups(qm, table, inherited_scales(fm), options.extra)
    dataset, ids = _images(data, float_model, options.images, executor)
    if not ids:
        raise FcnquantError("the scale search needs at least one calibration image")
    if not groups:
        return ScaleSearchResult(table, (), 0, 0.0, 0.0, 0.0, len(ids), 0, time.perf_counter() - t0)
    ref = Reference.run(executor, dataset, ids, DataConfig.of(data, split=None), fm)
    searchable = _model_for(executor, with_scale_inputs(qm, [g.init for g in groups]).SerializeToString())

    def error(choice: Sequence[int]) -> float:
        scales = {g.init: np.asarray(g.candidates[c], np.float32) for g, c in zip(groups, choice)}
        return ref.error(searchable, scales, options.metric)

    res: SearchResult = coordinate_descent(error, [len(g.candidates) for g in groups], [g.initial for g in groups],
                                           sweeps=options.sweeps, tol=options.tol)
    new_table, changes = _chosen_table(table, groups, res.choice)
    seconds = time.perf_counter() - t0
    out = ScaleSearchResult(new_table, tuple(changes), len(groups), res.error_before, res.error_after, ref.signal,
                            len(ids), res.evaluations, seconds)
    before, after = out.snr_db()
    log.info("scale search: %d of %d activation scales changed, output SNR %.2f -> %.2f dB (%d evaluations of %d "
             "images, %.1f s)", len(changes), len(groups), before, after, res.evaluations, len(ids), seconds)
    return out


def output_error(
    qmodels: Sequence[str | os.PathLike[str] | object],
    float_model: str | os.PathLike[str] | object,
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    *,
    images: int | None = DEFAULT_IMAGES,
) -> list[float]:
    """Returns, per model of ``qmodels``, the mean squared difference of its outputs from ``float_model``'s over
    ``images`` of the calibration images of ``data`` (spread evenly; None: all): the error
    :func:`search_activation_scales` minimises. ``run``: the executor the inference passes run on."""
    executor = RunConfig.of(run).resolved()
    dataset, ids = _images(data, float_model, images, executor)
    if not ids:
        raise FcnquantError("the output error needs at least one image")
    ref = Reference.run(executor, dataset, ids, DataConfig.of(data, split=None), as_model(float_model))
    return [ref.error(as_model(q).SerializeToString(), {}, "mse") for q in qmodels]


def _images(data, float_model, images: int | None, executor: Executor) -> tuple[Dataset, list[str]]:
    """Returns (dataset, the ``images`` of its calibration ids spread evenly over them)."""
    cfg = DataConfig.of(data, split=None)
    dataset = cfg.open(float_model if isinstance(float_model, (str, os.PathLike)) else None,
                       progress=executor.progress)
    return dataset, _spread(cfg.choose(dataset, progress=executor.progress), images)


def _chosen_table(table, groups: list[ScaleGroup], choice: Sequence[int]):
    """Returns (``table`` with the chosen scales, the changes)."""
    tensors = dict(table.tensors)
    changes = []
    for g, c in zip(groups, choice):
        if c == g.initial:
            continue
        new = g.candidates[c]
        for name in g.entries:
            tensors[name] = replace(tensors[name], scale=new)
        changes.append(ScaleChange(g.init, g.entries, g.candidates[g.initial], new))
    new_table = replace(table, tensors=tensors)
    new_table.validate()
    return new_table, changes


def _model_for(executor: Executor, raw: bytes):
    """Returns what to give ``executor`` for a model evaluated many times: an open session when it runs in this
    process (one session serves every evaluation), else the bytes (a cluster's workers keep their sessions)."""
    if isinstance(executor, LocalExecutor):
        from fcnquant.runtime import make_session

        return make_session(raw, threads=executor.threads, providers=executor.providers)
    return raw


@dataclass
class Reference:
    """The float model's outputs on the images (one list of outputs per image), what the errors compare to."""

    executor: Executor
    dataset: Any
    ids: list[str]
    preset: Any
    fixed_batch: int | None
    outputs: list[str]
    values: list[list[np.ndarray]]
    log_probs: list[list[np.ndarray]] | None = None

    @classmethod
    def run(cls, executor: Executor, dataset, ids: list[str], data: DataConfig, fm) -> "Reference":
        """Runs the float ModelProto ``fm`` over ``ids`` on the executor."""
        parts = executor.map(reference_shard, dataset, ids, args=(data,), models={"float": fm.SerializeToString()},
                             desc="scale search: float outputs")
        preset, fixed, outputs = parts[0][:3]
        return cls(executor, dataset, ids, preset, fixed, outputs, [v for part in parts for v in part[3]])

    @property
    def signal(self) -> float:
        """The mean square of the float outputs (for the SNR)."""
        return float(np.mean([np.mean(np.square(np.asarray(r, np.float64))) for outs in self.values for r in outs]))

    def error(self, qmodel, scales: dict[str, np.ndarray], metric: str) -> float:
        """Returns the mean over the images of the ``metric`` error of ``qmodel`` (bytes or a session) run with
        the scale inputs ``scales``."""
        if metric == "kl" and self.log_probs is None:
            self.log_probs = [[_log_softmax(np.asarray(r, np.float64)) for r in outs] for outs in self.values]
        wanted = self.log_probs if metric == "kl" else self.values
        parts = self.executor.map(error_shard, self.dataset, self.ids,
                                  args=(self.preset, self.fixed_batch, self.outputs, scales, metric),
                                  models={"quant": qmodel},
                                  shared={f"reference/{k}": v for k, v in enumerate(wanted)}, desc="scale search")
        total = 0.0
        for terms in parts:
            for term in terms:
                total += term
        return total / len(self.values)


def reference_shard(ctx: ShardContext, data: DataConfig) -> tuple[Any, int | None, list[str], list]:
    """Returns (preset, fixed batch, output names, [outputs of each image]) of the model ``"float"`` on the shard's
    images, one image per inference (a shard function)."""
    from fcnquant.runtime import input_spec

    fsess = ctx.session("float")
    _, shape = input_spec(fsess)
    name = fsess.get_inputs()[0].name
    outputs = [o.name for o in fsess.get_outputs()]
    preset = data.preset_for(fsess)
    values = []
    for mb in image_batches(ctx.dataset, preset, ctx.ids, 1, shape[0], with_masks=False):
        values.append(fsess.run(outputs, {name: np.ascontiguousarray(mb.feed, np.float32)}))
        ctx.advance(mb.n)
    return preset, shape[0], outputs, values


def error_shard(ctx: ShardContext, preset, fixed_batch: int | None, outputs: list[str],
                scales: dict[str, np.ndarray], metric: str) -> list[float]:
    """Returns the ``metric`` error of each of the shard's images: the model ``"quant"`` run with the scale inputs
    ``scales`` against the shared values ``reference/<image index>`` (outputs, or log-probabilities for ``"kl"``)
    (a shard function)."""
    qsess = ctx.session("quant")
    input_name = next(i.name for i in qsess.get_inputs() if i.name not in scales)
    feeds = dict(scales)
    terms = []
    for k, mb in enumerate(image_batches(ctx.dataset, preset, ctx.ids, 1, fixed_batch, with_masks=False)):
        feeds[input_name] = np.ascontiguousarray(mb.feed, np.float32)
        got = qsess.run(outputs, feeds)
        want = ctx.value(f"reference/{ctx.start + k}")
        if metric == "kl":
            terms.append(float(np.mean([kl_divergence(lp, _log_softmax(np.asarray(a, np.float64)))
                                        for a, lp in zip(got, want)])))
        else:
            terms.append(float(np.mean([np.mean(np.square(np.asarray(a, np.float64) - b))
                                        for a, b in zip(got, want)])))
        ctx.advance(mb.n)
    return terms


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
