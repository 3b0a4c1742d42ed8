"""Ranking the quantized layers, worst first: which to try in float before the others.

Two rankings, both measured on a few tuning images (``rank_ids``) before the search:

- ``isolated``: one ``compare_models`` pass of the all-int8 model; a layer's score is the error power of its
  isolated drift (``10^(-SNR/10)``: its own quantization, fed the float model's inputs). One pass for every layer,
  but it measures the error where it is made, not what it does to the prediction, and part of it (the rounding of
  the layer's int8 input and output, which stay int8 when the layer goes float) does not go away in float.
- ``sensitivity`` (default): for each layer, the all-int8 model with that layer alone in float, run over the
  ranking images; the score is how many pixels' predicted class returns to the float model's (the changed-pixel
  count of all-int8 minus that of the model with the layer in float; ties by the logits' squared error). It
  measures the gain the search is after, at the cost of one build and ``len(rank_ids)`` inferences per layer.

The score's sign: higher = more worth keeping in float.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fcnquant.data.config import DataConfig
from fcnquant.execute import Executor, RunConfig, ShardContext
from fcnquant.runtime import CPU_PROVIDERS
from fcnquant.tune.layers import Layer

log = logging.getLogger(__name__)

RANKINGS = ("sensitivity", "isolated")


@dataclass(frozen=True)
class Ranking:
    """Layers worst first, each with its score, and what the ranking cost."""

    method: str
    order: tuple[str, ...]  # layer names, worst first
    scores: dict[str, float]
    images: int
    builds: int
    seconds: float

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"method": self.method, "order": list(self.order),
                "scores": {k: (v if math.isfinite(v) else None) for k, v in self.scores.items()},
                "images": self.images, "builds": self.builds, "seconds": round(self.seconds, 3)}


def _order(layers: Sequence[Layer], scores: dict[str, float]) -> tuple[str, ...]:
    """Returns layer names by score, highest first; non-finite scores last, graph order breaking ties."""
    def key(layer: Layer):
        s = scores.get(layer.name, math.nan)
        return (0 if math.isfinite(s) else 1, -s if math.isfinite(s) else 0.0, layer.order)

    return tuple(layer.name for layer in sorted(layers, key=key))


def rank_isolated(float_model, int8_model, layers: Sequence[Layer], data: DataConfig,
                  run: RunConfig | Executor | None = None) -> Ranking:
    """Returns the Ranking of ``layers`` by the isolated drift of ``int8_model``: one compare pass over the images
    of ``data`` (its root, split and ``ids``), on the executor of ``run``."""
    from fcnquant.compare import CompareOptions, compare_models

    start = time.perf_counter()
    report = compare_models(float_model, int8_model, data, run,
                            CompareOptions(isolated=True, histogram_layers=0, drift_images="all"))
    by_tensor = {d.float_name: d for d in report.layers}
    scores: dict[str, float] = {}
    for layer in layers:
        drift = by_tensor.get(layer.output) or by_tensor.get(layer.pre_output)
        if drift is None or drift.isolated is None or math.isnan(drift.isolated.snr_db):
            scores[layer.name] = math.nan
            continue
        scores[layer.name] = 10.0 ** (-drift.isolated.snr_db / 10.0) if math.isfinite(drift.isolated.snr_db) else 0.0
    return Ranking("isolated", _order(layers, scores), scores, len(data.ids or ()), 0, time.perf_counter() - start)


def prediction_distance(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> tuple[int, float]:
    """Returns (pixels whose argmax class differs, summed squared error) of ``outputs`` against ``reference``
    logits, batch by batch."""
    changed, sq = 0, 0.0
    for ref, out in zip(reference, outputs):
        changed += int((ref.argmax(1) != out.argmax(1)).sum())
        sq += float(np.square(out.astype(np.float64) - ref).sum())
    return changed, sq


def distance_task(ctx: ShardContext, model: bytes) -> tuple[int, float]:
    """Returns :func:`prediction_distance` of the candidate ``model`` (serialized) on the shared ranking
    ``"images"`` against the shared float ``"logits"`` (a task function, one per candidate)."""
    from fcnquant.runtime import make_session, run_logits

    session = make_session(model, threads=ctx.threads, providers=ctx.providers)
    return prediction_distance(ctx.value("logits"),
                               [np.asarray(run_logits(session, x)[0]) for x in ctx.value("images")])


def float_logits(float_model, images: Sequence[np.ndarray], threads: int = 0,
                 providers: Sequence[str] = CPU_PROVIDERS) -> list[np.ndarray]:
    """Returns the float model's logits of every batch of ``images`` (``providers``: onnxruntime's)."""
    from fcnquant.runtime import make_session, run_logits

    session = make_session(Path(float_model), threads=threads, providers=providers)
    return [np.asarray(run_logits(session, x)[0]) for x in images]


def rank_sensitivity(float_model, layers: Sequence[Layer], build: Callable[[frozenset[str], Path], Path],
                     images: list[np.ndarray], run: RunConfig | Executor | None = None, *,
                     on_layer: Callable[[str], None] | None = None) -> Ranking:
    """Returns the Ranking of ``layers`` by the prediction pixels each one alone in float gives back.

    ``build(excluded, out)`` writes the int8 model with the nodes ``excluded`` in float; ``images`` are
    preprocessed NCHW batches of the ranking images. Every candidate is one task of the executor's pool
    (:func:`distance_task`, the candidate's bytes read as soon as it is built): in this process a task runs when
    it is submitted; on a cluster the next candidate is built here while the previous ones run.
    ``on_layer(name)`` is called after each layer's candidate is submitted.
    """
    executor = RunConfig.of(run).resolved()
    start = time.perf_counter()
    logits = float_logits(float_model, images, getattr(executor, "threads", 0),
                          getattr(executor, "providers", CPU_PROVIDERS))
    with tempfile.TemporaryDirectory(prefix="fcnquant-rank-") as tmp, \
            executor.pool(distance_task, shared={"images": list(images), "logits": logits}) as pool:
        pool.submit("", build(frozenset(), Path(tmp) / "all-int8.onnx").read_bytes())
        for k, layer in enumerate(layers):
            pool.submit(layer.name, build(frozenset(layer.nodes), Path(tmp) / f"layer{k}.onnx").read_bytes())
            if on_layer is not None:
                on_layer(layer.name)
        distances = pool.results()
    base = distances[""]
    scores = {layer.name: float(base[0] - distances[layer.name][0]) for layer in layers}
    ties = {layer.name: base[1] - distances[layer.name][1] for layer in layers}
    # ties in the pixel count are broken by the logits' error reduction, scaled below one pixel
    span = max((abs(v) for v in ties.values()), default=0.0) or 1.0
    combined = {n: scores[n] + 0.5 * ties[n] / span for n in scores}
    return Ranking("sensitivity", _order(layers, combined), combined, sum(x.shape[0] for x in images),
                   len(layers) + 1, time.perf_counter() - start)
