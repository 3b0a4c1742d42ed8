"""Compare's one pass over the images: final metrics on every image, per-layer drift on the drift images.

:func:`compare_shard` (a shard function) gives what the final pass (:func:`fcnquant.compare.final.final_shard`) and
the drift pass (:func:`fcnquant.compare.drift.measure.drift_shard`) give over the same images, each image read once.
Image by image (a batch of 1, the default), a drift image runs only through the drift pass's sessions, which
expose the paired activations, and its final metrics take those sessions' logits instead of a second run of the
plain sessions:

* the quantized model exposes its integer tensors (:mod:`fcnquant.compare.tensors.integer_taps`), its fused
  kernels' own outputs, and computes its logits as the plain session does;
* the float model exposing a Conv output that an Add reads computes its logits in another order; its session then
  also holds a copy of the nodes from those Convs to the logits, unexposed, that onnxruntime fuses as in the
  plain model (:mod:`fcnquant.compare.tensors.plain_logits`). The exposed tensors are computed as before.

So the final metrics stay bit for bit what ``fcnquant eval`` computes, and the drift what the drift pass computes.
That each side's logits equal the plain session's is checked: the shard's first drift image also runs through both
plain sessions, whose logits it is scored with, and a side whose logits differ in any bit (or that has no copy:
one holding more than a quarter of the float model's weights costs more than the run it saves) runs its plain
session on every drift image, as the separate passes did. With larger batches the shard runs the final pass over
its images and then the drift pass over its drift images.

On the full-size fcn8s at 320x320 this saves, per drift image, a float and an int8 inference (~0.3 s on 2 cores),
for a copy of two 1x1 score convolutions, two Adds and the Resizes after them.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from fcnquant.compare.drift.measure import DriftShard, DriftSpec, drift_runner, run_drift
from fcnquant.compare.final import FinalScorer, FinalShard
from fcnquant.data import DataConfig, Preset
from fcnquant.execute import ShardContext, image_batches

log = logging.getLogger(__name__)


def compare_shard(ctx: ShardContext, preset: Preset | DataConfig, batch_size: int, boundary_radius: int,
                  gallery: int, names: tuple[str, str], spec: DriftSpec, drift_on: Sequence[str],
                  histograms: dict | None = None) -> tuple[FinalShard, DriftShard | None]:
    """Returns the final pass over the shard's images and the drift pass over those of them in ``drift_on`` (None
    when there are none) of the models ``"float"`` and ``"quant"`` (a shard function; the module docstring).

    ``preset``, ``batch_size``, ``boundary_radius``, ``gallery``, ``names``: as for
    :func:`~fcnquant.compare.final.final_shard`; ``spec`` and ``histograms``: as for
    :func:`~fcnquant.compare.drift.measure.drift_shard` (its ``batch_size`` is the same ``batch_size``).
    """
    scorer = FinalScorer(ctx, preset, batch_size, boundary_radius, gallery, names)
    wanted = set(drift_on)
    mine = [i for i in ctx.ids if i in wanted]
    if not mine:
        _score_plain(ctx, scorer, ctx.ids)
        return scorer.result(), None
    if scorer.batch_size != 1:
        _score_plain(ctx, scorer, ctx.ids)
        runner = drift_runner(ctx, spec)
        return scorer.result(), run_drift(ctx, runner, scorer.preset, spec, mine, histograms, advance=False)
    return _joint(ctx, scorer, spec, wanted, histograms)


def _score_plain(ctx: ShardContext, scorer: FinalScorer, ids: Sequence[str]) -> None:
    for mb in image_batches(ctx.dataset, scorer.preset, ids, scorer.batch_size, scorer.fixed_batch):
        scorer.score(mb, *scorer.logits(mb))
        ctx.advance(mb.n)


def _joint(ctx: ShardContext, scorer: FinalScorer, spec: DriftSpec, wanted: set[str],
           histograms: dict | None) -> tuple[FinalShard, DriftShard]:
    """Returns both passes over the shard's images one at a time, drift images through the drift sessions only."""
    import copy

    from fcnquant.compare.drift.measure import DriftSums
    from fcnquant.compare.histograms import observe_images

    runner = drift_runner(ctx, spec, logits=True)
    hists = copy.deepcopy(histograms or {})  # each shard fills its own (arguments may also arrive read-only)
    reuse: tuple[bool, bool] | None = None  # (float, quant): the drift sessions' logits equal the plain ones
    done: list[str] = []
    for mb in image_batches(ctx.dataset, scorer.preset, ctx.ids, 1, scorer.fixed_batch):
        if mb.ids[0] not in wanted:
            scorer.score(mb, *scorer.logits(mb))
            ctx.advance(mb.n)
            continue
        f_vals, f_logits, q_logits = runner.step(mb.feed, mb.n)
        if hists:
            observe_images(hists, f_vals, mb.n)
        del f_vals
        if reuse is None:
            plain = scorer.logits(mb)
            reuse = (_same(f_logits, plain[0], mb.n), _same(q_logits, plain[1], mb.n))
            if not all(reuse):
                log.info("drift sessions' logits differ from the plain sessions' (float %s, quantized %s): the "
                         "drift images also run the plain sessions", *("equal" if r else "differ" for r in reuse))
            f_logits, q_logits = plain
        else:
            f_logits = f_logits[:mb.n] if reuse[0] else None
            q_logits = q_logits[:mb.n] if reuse[1] else None
            if f_logits is None or q_logits is None:
                plain = scorer.logits(mb)
                f_logits = plain[0] if f_logits is None else f_logits
                q_logits = plain[1] if q_logits is None else q_logits
        scorer.score(mb, np.asarray(f_logits), np.asarray(q_logits))
        done.extend(mb.ids)
        ctx.advance(mb.n)
    return scorer.result(), DriftShard(DriftSums(tuple(done), runner.acc, runner.isod), hists)


def _same(logits: np.ndarray | None, plain: np.ndarray, n: int) -> bool:
    """Returns whether ``logits`` (None: not available) hold the bits of ``plain`` for the first ``n`` images."""
    if logits is None:
        return False
    got = np.asarray(logits)[:n]
    return got.shape == plain.shape and got.dtype == plain.dtype and got.tobytes() == plain.tobytes()
