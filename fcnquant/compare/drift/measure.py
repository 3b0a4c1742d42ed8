"""The drift pass: per-layer drift of a quantized model over a list of images, accumulated and isolated, streaming.

Per batch (memory stays constant in the number of images):

1. the float model runs exposing the paired activations (the reference values);
2. with ``accumulated``, the quantized model runs exposing its paired activations (the whole quantized model's
   drift);
3. with ``isolated``, the isolated rewrite (:mod:`fcnquant.compare.tensors.isolated`) runs fed the float
   activations: every layer's own quantization error, in one run.

Only exact sums are kept (:class:`~fcnquant.compare.drift.metrics.DriftAccumulator`), updated one image at a time,
so the result does not depend on the batch size or on how the images are split: the :class:`DriftSums` of the
shards (:func:`drift_shard`) merge into the same bits as one run over all of them. The float activations can
also fill value histograms (:mod:`fcnquant.compare.histograms`), which merge exactly too. Each batch's tensors are
dropped. Exposing tensors changes onnxruntime's fusions (and turns off the integer kernels of a QDQ model), which
is why the final metrics come from plain sessions in their own pass (:mod:`fcnquant.compare.final`) and the drift
from here, on a subsample (:func:`drift_ids`) when the split is large.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fcnquant.compare.drift.metrics import DriftAccumulator, DriftMetrics
from fcnquant.compare.tensors.pairing import TensorPair
from fcnquant.data import Preset
from fcnquant.errors import DataError, ModelError
from fcnquant.execute import LocalExecutor, ShardContext, image_batches, resolve_batch
from fcnquant.runtime import CPU_PROVIDERS

log = logging.getLogger(__name__)

DEFAULT_DRIFT_IMAGES = 16


@dataclass
class DriftSums:
    """The drift accumulators per float tensor name over ``ids`` (``None`` for a side not computed); ``merge`` adds
    the sums over other images exactly."""

    ids: tuple[str, ...]
    accumulated: dict[str, DriftAccumulator] | None
    isolated: dict[str, DriftAccumulator] | None

    def merge(self, other: "DriftSums") -> "DriftSums":
        """Adds ``other`` (the sums over other images) into this and returns self; the ids are concatenated."""
        for mine, theirs in ((self.accumulated, other.accumulated), (self.isolated, other.isolated)):
            if (mine is None) != (theirs is None) or (mine is not None and mine.keys() != theirs.keys()):
                raise ValueError("drift sums of different tensors or passes cannot be merged")
            for name, acc in (mine or {}).items():
                acc.merge(theirs[name])
        self.ids = self.ids + tuple(other.ids)
        return self

    def result(self) -> "DriftResult":
        """Returns the DriftResult (metrics per tensor) of these sums."""
        def side(d):
            return None if d is None else {k: a.result() for k, a in d.items()}

        return DriftResult(ids=self.ids, accumulated=side(self.accumulated), isolated=side(self.isolated))


@dataclass(frozen=True)
class DriftResult:
    """Drift per float tensor name over ``ids``; ``accumulated``/``isolated`` are None when not computed."""

    ids: tuple[str, ...]
    accumulated: dict[str, DriftMetrics] | None
    isolated: dict[str, DriftMetrics] | None

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        def side(d):
            return None if d is None else {k: v.to_dict() for k, v in d.items()}

        return {"ids": list(self.ids), "accumulated": side(self.accumulated), "isolated": side(self.isolated)}


def drift_ids(ids: Sequence[str], drift_images: int | str | None = DEFAULT_DRIFT_IMAGES) -> list[str]:
    """Returns the deterministic subsample of ``ids`` to measure drift on: ``drift_images`` of them, spread evenly.

    ``None`` or ``"all"`` (or a count >= len(ids)) keeps every id. Otherwise ``ids`` is cut into ``k`` equal
    strata and the middle id of each is taken: index ``(2j + 1) * n // (2k)`` for ``j = 0 .. k-1``, in order.
    """
    ids = list(ids)
    if drift_images is None or (isinstance(drift_images, str) and drift_images.strip().lower() == "all"):
        return ids
    try:
        k = int(drift_images)
    except (TypeError, ValueError):
        raise DataError(f"drift images must be a positive count or 'all', got {drift_images!r}") from None
    if isinstance(drift_images, float) and k != drift_images:
        raise DataError(f"drift images must be a whole number, got {drift_images!r}")
    if k < 1:
        raise DataError(f"drift images must be at least 1 (or 'all'), got {drift_images!r}")
    n = len(ids)
    if k >= n:
        return ids
    return [ids[(2 * j + 1) * n // (2 * k)] for j in range(k)]


@dataclass(frozen=True)
class DriftSpec:
    """What the drift pass measures. ``pairs``: the measured pairs (None: ``pair_tensors(...).measured`` of the two
    models). ``accumulated=False`` skips the quantized model's own run (isolated drift only: what ranking layers
    needs); ``isolated=False`` skips the isolated run. ``batch_size``: images per run (a fixed batch dimension of
    the models wins). ``integer_taps``: read the quantized model's DequantizeLinear outputs at their integer inputs
    and dequantize them here (the same values; onnxruntime keeps its integer kernels:
    :mod:`fcnquant.compare.tensors.integer_taps`)."""

    pairs: tuple[TensorPair, ...] | None = None
    accumulated: bool = True
    isolated: bool = True
    batch_size: int = 1
    integer_taps: bool = True

    def __post_init__(self) -> None:
        if self.pairs is not None and not isinstance(self.pairs, tuple):
            object.__setattr__(self, "pairs", tuple(self.pairs))


@dataclass
class DriftShard:
    """One shard's result of the drift pass: its sums, and the value histograms its float activations filled."""

    sums: DriftSums
    histograms: dict = field(default_factory=dict)  # float tensor -> fcnquant.compare.histograms.FixedHistogram


def drift_shard(ctx: ShardContext, preset: Preset, spec: DriftSpec, histograms: dict | None = None) -> DriftShard:
    """Returns the drift of the model ``"quant"`` against ``"float"`` over the shard's images (a shard function).

    The models are ONNX paths, bytes or ModelProtos. ``preset``: the float model's Preset. ``histograms``: empty
    FixedHistograms by float tensor, copied here and filled with the shard's float activations. Raises ModelError
    when nothing can be paired or a pair's shapes differ.
    """
    if not ctx.ids:
        raise DataError("no images to measure drift on")
    runner = drift_runner(ctx, spec)
    return run_drift(ctx, runner, preset, spec, ctx.ids, histograms)


def drift_runner(ctx: ShardContext, spec: DriftSpec, *, logits: bool = False) -> "DriftRunner":
    """Returns the drift pass's sessions and sums for the shard's models ``"float"`` and ``"quant"``; with
    ``logits``, its :meth:`DriftRunner.step` also gives both models' plain logits where it can."""
    return DriftRunner(_model_proto(ctx, "float"), _model_proto(ctx, "quant"), spec, ctx.threads, ctx.providers,
                        logits=logits)


def run_drift(ctx: ShardContext, runner: "DriftRunner", preset: Preset, spec: DriftSpec, ids: Sequence[str],
              histograms: dict | None = None, advance: bool = True) -> DriftShard:
    """Returns the DriftShard of ``runner`` over the images ``ids`` of the shard's dataset (in batches of
    ``spec.batch_size`` or the models' fixed batch), filling copies of ``histograms``."""
    from fcnquant.compare.histograms import observe_images

    hists = copy.deepcopy(histograms or {})  # each shard fills its own (arguments may also arrive read-only)
    q_dim = runner.q_run.batch_dim if runner.q_run is not None else None
    batch_size, fixed = resolve_batch(spec.batch_size, runner.f_run.batch_dim, q_dim)
    for mb in image_batches(ctx.dataset, preset, ids, batch_size, fixed, with_masks=False):
        f_vals = runner.add(mb.feed, mb.n)
        if hists:
            observe_images(hists, f_vals, mb.n)
        del f_vals
        if advance:
            ctx.advance(mb.n)
    return DriftShard(DriftSums(tuple(ids), runner.acc, runner.isod), hists)


def merge_drift(parts: Sequence[DriftShard]) -> DriftShard:
    """Returns the shards' results merged in shard order (the histograms into copies: they may be read-only)."""
    sums = parts[0].sums
    for part in parts[1:]:
        sums.merge(part.sums)
    hists = copy.deepcopy(parts[0].histograms)
    for part in parts[1:]:
        for name, h in part.histograms.items():
            hists[name].merge(h)
    return DriftShard(sums, hists)


def drift_sums(float_model, quant_model, dataset, preset: Preset, ids: Sequence[str], spec: DriftSpec | None = None, *,
               threads: int = 0, progress: bool = True) -> DriftSums:
    """Returns the DriftSums of ``quant_model`` against ``float_model`` (ONNX paths or ModelProtos) over the images
    ``ids`` of ``dataset``, in this process (:func:`drift_shard` is the pass on any executor).

    ``preset``: a Preset (the float model's, as ``compare_models`` resolves it). ``spec``: what to measure
    (:class:`DriftSpec`). ``threads``: onnxruntime intra-op threads. Raises ModelError when nothing can be
    paired or a pair's shapes differ.
    """
    parts = LocalExecutor(threads, progress=progress).map(
        drift_shard, dataset, list(ids), args=(preset, spec or DriftSpec()),
        models={"float": float_model, "quant": quant_model}, desc="compare: drift")
    return merge_drift(parts).sums


def layer_drift(float_model, quant_model, dataset, preset: Preset, ids: Sequence[str], spec: DriftSpec | None = None, *,
                threads: int = 0, progress: bool = True) -> DriftResult:
    """Returns the DriftResult of ``quant_model`` against ``float_model`` over the images ``ids`` of ``dataset``:
    the metrics of :func:`drift_sums` (the same arguments)."""
    return drift_sums(float_model, quant_model, dataset, preset, ids, spec, threads=threads,
                      progress=progress).result()


def _model_proto(ctx: ShardContext, key: str):
    """Returns the model ``key`` of the shard as an ONNX ModelProto (from a path, bytes or a ModelProto)."""
    import onnx

    from fcnquant._io import as_model

    m = ctx.model(key)
    return onnx.load_from_string(m) if isinstance(m, bytes) else as_model(m)


class DriftRunner:
    """The drift pass's sessions and sums: the float and quantized models exposing the paired activations, the
    isolated rewrite, and one DriftAccumulator per float tensor and side."""

    def __init__(self, fm, qm, spec: DriftSpec, threads: int, providers: Sequence[str] = CPU_PROVIDERS, *,
                 logits: bool = False) -> None:
        from fcnquant.compare.tensors.isolated import build_isolated
        from fcnquant.compare.tensors.pairing import pair_tensors

        measured = spec.pairs if spec.pairs is not None else pair_tensors(fm, qm).measured
        if not measured:
            raise ModelError("no quantized activation could be paired with the float model")
        self.measured = measured
        self.f_inputs, self.q_inputs = set(_graph_inputs(fm)), set(_graph_inputs(qm))
        f_names = list(dict.fromkeys(p.float_name for p in measured if p.float_name not in self.f_inputs))
        q_names = list(dict.fromkeys(p.quant_name for p in measured if p.quant_name not in self.q_inputs))
        self.f_run = _Tapped(fm, f_names, threads, providers, logits=logits)
        self.q_run = (_Tapped(qm, q_names, threads, providers, integer_taps=spec.integer_taps, logits=logits)
                      if spec.accumulated else None)
        self.plan = build_isolated(qm, measured) if spec.isolated else None
        if self.plan is not None:
            outs = list(dict.fromkeys(self.plan.outputs.values()))
            self.iso_taps = _isolated_taps(self.plan, outs, spec.integer_taps)
            self.iso = _isolated_session(self.plan, self.iso_taps, threads, providers)
            self.iso_inputs = {i.name for i in self.iso.get_inputs()}
        self.q_input, self.q_dtype = (self.q_run.input_name, self.q_run.dtype) if self.q_run else _input_of(qm)
        self.acc = {p.float_name: DriftAccumulator() for p in measured} if spec.accumulated else None
        self.isod = {p.float_name: DriftAccumulator() for p in measured} if self.plan is not None else None

    def add(self, images: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """Adds the first ``n`` images of a (padded) batch to the sums; returns the float activations."""
        return self.step(images, n)[0]

    def step(self, images: np.ndarray, n: int) -> tuple[dict[str, np.ndarray], np.ndarray | None,
                                                         np.ndarray | None]:
        """Adds the first ``n`` images of a (padded) batch to the sums; returns the float activations and both
        models' logits as their models without exposures compute them, when the runner was built with ``logits``
        and the exposing sessions can give them (else None; :mod:`fcnquant.compare.tensors.plain_logits`)."""
        f_vals, f_logits = self.f_run.run(images)
        q_logits = None
        for name in self.f_inputs:
            f_vals[name] = images.astype(self.f_run.dtype, copy=False)
        if self.q_run is not None:
            q_vals, q_logits = self.q_run.run(images)
            for name in self.q_inputs:
                q_vals[name] = images.astype(self.q_run.dtype, copy=False)
            for p in self.measured:
                _update(self.acc[p.float_name], f_vals[p.float_name], q_vals[p.quant_name], n, p, "accumulated")
            del q_vals
        if self.plan is not None:
            plan, taps = self.plan, self.iso_taps
            feeds = {name: f_vals[src].astype(dtype, copy=False) for name, (src, dtype) in plan.feeds.items()}
            if self.q_input in self.iso_inputs:
                feeds[self.q_input] = images.astype(self.q_dtype, copy=False)
            feeds = {k: v for k, v in feeds.items() if k in self.iso_inputs}
            iso_vals = taps.values(dict(zip(taps.exposed, self.iso.run(taps.exposed, feeds))))
            del feeds
            for p in self.measured:
                _update(self.isod[p.float_name], f_vals[p.float_name], iso_vals[plan.outputs[p.float_name]], n, p,
                        "isolated")
        return f_vals, f_logits, q_logits


class _Tapped:
    """One model's session exposing ``names`` besides its outputs (DQ outputs at their integer inputs when
    ``integer_taps``); with ``logits``, also the logits as the model without exposures computes them
    (:func:`fcnquant.compare.tensors.plain_logits.plain_logits`; ``logits_name`` is None where that costs too
    much)."""

    def __init__(self, model, names: list[str], threads: int, providers: Sequence[str] = CPU_PROVIDERS, *,
                 integer_taps: bool = False, logits: bool = False) -> None:
        from fcnquant.compare.tensors.integer_taps import IntegerTaps, plan_taps
        from fcnquant.compare.tensors.plain_logits import plain_logits
        from fcnquant.runtime import input_dtype, input_spec, make_session, with_outputs

        self.names = list(dict.fromkeys(names))
        self.taps = plan_taps(model, self.names) if integer_taps else IntegerTaps(tuple(self.names))
        self.exposed = self.taps.exposed
        self.logits_name = None
        if logits:
            plain = plain_logits(model, self.exposed)
            if plain is not None:
                model, self.logits_name = plain.model, plain.output
        self.session = make_session(with_outputs(model, self.exposed).SerializeToString(), threads=threads,
                                    spinning=False, providers=providers)  # several sessions take turns on every image
        self.input_name, shape = input_spec(self.session)
        self.batch_dim = shape[0]
        self.dtype = np.dtype(input_dtype(self.session))

    def run(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Returns {tensor: value} of the wanted tensors for one batch, and the plain logits (None without)."""
        if not self.names and self.logits_name is None:
            return {}, None
        feed = {self.input_name: images.astype(self.dtype, copy=False)}
        fetch = list(dict.fromkeys([*self.exposed, *([self.logits_name] if self.logits_name else [])]))
        raw = dict(zip(fetch, self.session.run(fetch, feed)))
        logits = raw[self.logits_name] if self.logits_name else None
        return (self.taps.values(raw) if self.names else {}), logits


def _isolated_taps(plan, outputs: list[str], integer_taps: bool):
    from fcnquant.compare.tensors.integer_taps import IntegerTaps, plan_taps

    return plan_taps(plan.model, outputs) if integer_taps else IntegerTaps(tuple(outputs))


def _isolated_session(plan, taps, threads: int, providers: Sequence[str] = CPU_PROVIDERS):
    """Returns the isolated rewrite's session; its outputs are the taps' exposed tensors."""
    from fcnquant.compare.tensors.integer_taps import with_exposed_outputs
    from fcnquant.runtime import make_session

    model = with_exposed_outputs(plan.model, taps) if taps.dequant else plan.model
    return make_session(model.SerializeToString(), threads=threads, spinning=False, providers=providers)


def _input_of(model) -> tuple[str, np.dtype]:
    """Returns (name, numpy dtype) of a model's single image input, read from the graph."""
    from onnx import helper

    name = _graph_inputs(model)[0]
    vi = next(i for i in model.graph.input if i.name == name)
    return name, np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def _graph_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _update(accumulator: DriftAccumulator, ref: np.ndarray, test: np.ndarray, n: int, pair: TensorPair,
            kind: str) -> None:
    """Adds the first ``n`` images of a batch, one image at a time (the sums then do not depend on batching)."""
    try:
        if ref.shape != test.shape:
            raise ValueError(f"reference shape {ref.shape} differs from test shape {test.shape}")
        for i in range(n):
            accumulator.update(ref[i], test[i])
    except ValueError as exc:
        raise ModelError(f"{kind} drift of '{pair.float_name}' against '{pair.quant_name}': {exc}") from exc

