"""Per-layer drift of a quantized model on a list of images: accumulated and isolated, streaming.

Per batch (memory stays constant in the number of images):

1. the float model runs exposing the paired activations (the reference values);
2. with ``accumulated``, the quantized model runs exposing its paired activations (the whole quantized model's
   drift);
3. with ``isolated``, the isolated rewrite (:mod:`fcnquant.compare.isolated`) runs fed the float activations:
   every layer's own quantization error, in one run.

Only exact sums are kept (:class:`~fcnquant.compare.drift.DriftAccumulator`), updated one image at a time, so the
result does not depend on the batch size or on how the images are split: :class:`DriftSums` of disjoint image
lists merge (``merge``) into the same bits as one run over all of them (what ``fcnquant.distributed`` relies on).
Each batch's tensors are dropped.
Exposing tensors changes onnxruntime's fusions (and turns off the integer kernels of a QDQ model), which is why the
final metrics come from plain sessions elsewhere (:mod:`fcnquant.compare.final_pass`) and the drift from here, on a
subsample (:func:`drift_ids`) when the split is large.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fcnquant.compare.batching import pad_batch, resolve_batch
from fcnquant.compare.drift import DriftAccumulator, DriftMetrics
from fcnquant.compare.pairing import TensorPair
from fcnquant.errors import DataError, ModelError

log = logging.getLogger(__name__)

DEFAULT_DRIFT_IMAGES = 16

FloatHook = Callable[[dict[str, np.ndarray], int], None]


@dataclass
class DriftSums:
    """The drift accumulators per float tensor name over ``ids`` (``None`` for a side not computed); mergeable."""

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


def layer_drift(float_model, quant_model, dataset, preset, ids: Sequence[str], **options) -> DriftResult:
    """Returns the DriftResult of ``quant_model`` against ``float_model`` over the images ``ids`` of ``dataset``:
    the metrics of :func:`drift_sums` (the same keyword options)."""
    return drift_sums(float_model, quant_model, dataset, preset, ids, **options).result()


def drift_sums(
    float_model,
    quant_model,
    dataset,
    preset,
    ids: Sequence[str],
    *,
    pairs: Sequence[TensorPair] | None = None,
    accumulated: bool = True,
    isolated: bool = True,
    batch_size: int = 1,
    threads: int = 0,
    progress: bool = True,
    on_float: FloatHook | None = None,
    on_images: Callable[[int], None] | None = None,
    integer_taps: bool = True,
) -> DriftSums:
    """Returns the DriftSums of ``quant_model`` against ``float_model`` over the images ``ids`` of ``dataset``.

    ``float_model``/``quant_model``: ONNX paths or ModelProtos. ``preset``: a Preset (the float model's, as
    ``compare_models`` resolves it). ``pairs``: the measured pairs (default: ``pair_tensors(...).measured``).
    ``accumulated=False`` skips the quantized model's own run (isolated drift only: what ranking layers
    needs); ``isolated=False`` skips the isolated run. ``on_float(values, n)`` receives each batch's float
    activations ({float tensor: array}, the first ``n`` rows are real images) e.g. for histograms.
    ``on_images(n)`` is called after each batch of ``n`` images (progress of a remote shard). ``integer_taps``:
    read the quantized model's DequantizeLinear outputs at their integer inputs and dequantize them here (the
    same values; onnxruntime keeps its integer kernels: :mod:`fcnquant.compare.integer_taps`).
    Raises ModelError when nothing can be paired or a pair's shapes differ.
    """
    from tqdm import tqdm

    from fcnquant._io import load_onnx
    from fcnquant.compare.isolated import build_isolated
    from fcnquant.compare.pairing import pair_tensors
    from fcnquant.data import iter_batches

    fm = float_model if hasattr(float_model, "graph") else load_onnx(Path(float_model))
    qm = quant_model if hasattr(quant_model, "graph") else load_onnx(Path(quant_model))
    measured = tuple(pairs) if pairs is not None else pair_tensors(fm, qm).measured
    if not measured:
        raise ModelError("no quantized activation could be paired with the float model")
    if not ids:
        raise DataError("no images to measure drift on")
    f_inputs, q_inputs = set(_graph_inputs(fm)), set(_graph_inputs(qm))
    f_names = list(dict.fromkeys(p.float_name for p in measured if p.float_name not in f_inputs))
    q_names = list(dict.fromkeys(p.quant_name for p in measured if p.quant_name not in q_inputs))
    f_run = _Tapped(fm, f_names, threads)
    q_run = _Tapped(qm, q_names, threads, integer_taps=integer_taps) if accumulated else None
    plan = build_isolated(qm, measured) if isolated else None
    iso_outs = list(dict.fromkeys(plan.outputs.values())) if plan is not None else []
    iso_taps = _isolated_taps(plan, iso_outs, integer_taps) if plan is not None else None
    iso = _isolated_session(plan, iso_taps, threads) if plan is not None else None
    iso_inputs = {i.name for i in iso.get_inputs()} if iso is not None else set()
    q_input, q_dtype = (q_run.input_name, q_run.dtype) if q_run is not None else _input_of(qm)
    del fm, qm
    batch_size, fixed = resolve_batch(batch_size, f_run.batch_dim, q_run.batch_dim if q_run else None)

    acc = {p.float_name: DriftAccumulator() for p in measured} if accumulated else None
    isod = {p.float_name: DriftAccumulator() for p in measured} if plan is not None else None
    with tqdm(total=len(ids), desc="compare: drift", unit="img", disable=not progress) as bar:
        for batch in iter_batches(dataset, preset, ids, batch_size, with_masks=False):
            n = batch.images.shape[0]
            images = pad_batch(batch.images, fixed)
            f_vals = f_run.run(images)
            for name in f_inputs:
                f_vals[name] = images.astype(f_run.dtype, copy=False)
            if q_run is not None:
                q_vals = q_run.run(images)
                for name in q_inputs:
                    q_vals[name] = images.astype(q_run.dtype, copy=False)
                for p in measured:
                    _update(acc[p.float_name], f_vals[p.float_name], q_vals[p.quant_name], n, p, "accumulated")
                del q_vals
            if plan is not None:
                feeds = {name: f_vals[src].astype(dtype, copy=False) for name, (src, dtype) in plan.feeds.items()}
                if q_input in iso_inputs:
                    feeds[q_input] = images.astype(q_dtype, copy=False)
                feeds = {k: v for k, v in feeds.items() if k in iso_inputs}
                iso_vals = iso_taps.values(dict(zip(iso_taps.exposed, iso.run(iso_taps.exposed, feeds))))
                del feeds
                for p in measured:
                    _update(isod[p.float_name], f_vals[p.float_name], iso_vals[plan.outputs[p.float_name]], n, p,
                            "isolated")
                del iso_vals
            if on_float is not None:
                on_float(f_vals, n)
            del f_vals
            bar.update(n)
            if on_images is not None:
                on_images(n)
    return DriftSums(ids=tuple(ids), accumulated=acc, isolated=isod)


class _Tapped:
    """One model's session exposing ``names`` besides its outputs (DQ outputs at their integer inputs when
    ``integer_taps``)."""

    def __init__(self, model, names: list[str], threads: int, *, integer_taps: bool = False) -> None:
        from fcnquant.compare.integer_taps import IntegerTaps, plan_taps
        from fcnquant.runtime import input_dtype, input_spec, make_session, with_outputs

        self.names = list(dict.fromkeys(names))
        self.taps = plan_taps(model, self.names) if integer_taps else IntegerTaps(tuple(self.names))
        self.exposed = self.taps.exposed
        self.session = make_session(with_outputs(model, self.exposed).SerializeToString(), threads=threads,
                                    spinning=False)  # three sessions take turns on every image
        self.input_name, shape = input_spec(self.session)
        self.batch_dim = shape[0]
        self.dtype = np.dtype(input_dtype(self.session))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Returns {tensor: value} of the wanted tensors for one batch."""
        if not self.names:
            return {}
        feed = {self.input_name: images.astype(self.dtype, copy=False)}
        return self.taps.values(dict(zip(self.exposed, self.session.run(self.exposed, feed))))


def _isolated_taps(plan, outputs: list[str], integer_taps: bool):
    from fcnquant.compare.integer_taps import IntegerTaps, plan_taps

    return plan_taps(plan.model, outputs) if integer_taps else IntegerTaps(tuple(outputs))


def _isolated_session(plan, taps, threads: int):
    """Returns the isolated rewrite's session; its outputs are the taps' exposed tensors."""
    from fcnquant.compare.integer_taps import with_exposed_outputs
    from fcnquant.runtime import make_session

    model = with_exposed_outputs(plan.model, taps) if taps.dequant else plan.model
    return make_session(model.SerializeToString(), threads=threads, spinning=False)


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

