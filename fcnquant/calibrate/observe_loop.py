"""The image loop of a collection: one batch run into reused output buffers, its tensors observed.

On the CPU the observers run in line, between two runs, a batch's tensor updates shared by a few threads (one of
them also reading the next batch); on an accelerator they overlap the next batch's inference in a worker thread.
The choices and their measurements are in :mod:`fcnquant.calibrate.collect`'s docstring. Updates are applied in
batch order and the statistics are order-independent anyway: the result is the same bit for bit either way.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Callable

import numpy as np

from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.errors import CalibrationError
from fcnquant.execute import ShardContext, image_batches
from fcnquant.observers import NonFiniteError
from fcnquant.observers import kernel

log = logging.getLogger(__name__)


class _Observer:
    """Feeds one batch's tensors into the statistics, turning NaN/Inf errors into messages with image ids.

    The statistics are made at the first batch: ``new_stats(compiled=compiled)`` (the compiled kernel where it is
    built unless ``compiled`` is False; numpy otherwise).
    """

    def __init__(self, new_stats: Callable[..., CalibrationStats], names: list[str], input_name: str,
                 extra: dict | None = None, *, compiled: bool | None = None) -> None:
        self.extra = extra or {}  # {key: (tensor, accumulator)} (collect_with_extra)
        self.new_stats = new_stats
        self.stats: CalibrationStats | None = None
        self.compiled = compiled
        self.names = names
        self.input_name = input_name
        self.skipped: dict[str, list[str]] = {}  # tensor -> image ids that had NaN/Inf values (skip mode)

    def result(self) -> CalibrationStats:
        """Returns the statistics (empty ones when nothing was observed)."""
        if self.stats is None:
            self.stats = self.new_stats(compiled=False)
        return self.stats

    def observe(self, ids: list[str], images: np.ndarray, fetched: dict[str, np.ndarray]) -> None:
        """Adds one batch to the statistics (and the extra accumulators), one tensor after the other."""
        for _, task in self.tasks(ids, images, fetched):
            task()

    def tasks(self, ids: list[str], images: np.ndarray, fetched: dict[str, np.ndarray]
              ) -> list[tuple[int, Callable[[], None]]]:
        """Returns the updates of one batch as (values read, callable), in the tensors' order (the extra
        accumulators last, as one task).

        Each one touches only its own tensor's statistics, so any of them may run at the same time as the others;
        a tensor's statistics see the batches in order as long as a batch's tasks end before the next batch's start.
        """
        if self.stats is None:
            self.stats = self.new_stats(compiled=self.compiled)
            if self.compiled is False:
                log.debug("observing through numpy, as asked")
            elif kernel.available():
                log.debug("observing through the compiled kernel")
            else:
                log.info("observing through numpy: the compiled kernels (fcnquant._native) are %s",
                         "turned off by FCNQUANT_NO_NATIVE" if kernel.disabled() else
                         "not built (reinstall fcnquant where a C compiler is found to observe ~3x faster)")
        n = len(ids)
        out: list[tuple[int, Callable[[], None]]] = []
        for name in self.names:
            x = images if name == self.input_name else fetched[name]
            out.append((x.size, partial(self._update, name, ids, x, n)))
        if self.extra:
            out.append((0, partial(self._update_extra, images, fetched, n)))
        return out

    def _update(self, name: str, ids: list[str], x: np.ndarray, n: int) -> None:
        if x.shape[0] != n:  # a fixed batch padded with repeats of the last image
            x = x[:n]
        ts = self.stats.tensors[name]
        before = ts.nonfinite
        try:
            ts.update(x)
        except NonFiniteError as exc:
            bad = _nonfinite_images(ids, x)
            raise CalibrationError(
                f"tensor '{name}' has {exc.count} NaN/Inf value(s) on image(s) {', '.join(bad)}; "
                "check the model and the preprocessing, or skip such values with --skip-nonfinite"
            ) from None
        if ts.nonfinite != before:
            self.skipped.setdefault(name, []).extend(_nonfinite_images(ids, x))

    def _update_extra(self, images: np.ndarray, fetched: dict[str, np.ndarray], n: int) -> None:
        for name, acc in self.extra.values():
            acc.update((images if name == self.input_name else fetched[name])[:n])

    def report_skipped(self) -> None:
        for name in self.names:  # in the tensors' order, whichever thread met them first
            if name in self.skipped:
                image_ids = self.skipped[name]
                log.warning("tensor '%s': skipped %d NaN/Inf value(s) on %d image(s): %s", name,
                            self.stats.tensors[name].nonfinite, len(image_ids), _show(image_ids))


def _nonfinite_images(ids: list[str], x: np.ndarray) -> list[str]:
    return [ids[j] for j in range(len(ids)) if not np.isfinite(x[j]).all()]


def _show(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def _run(session, model_input, fetch, ctx: ShardContext, preset, batch_size, fixed_batch, observer, overlap,
         threads: int = 2, started: tuple | None = None):
    """Runs every batch of the shard and observes it: overlapped with the next batch's inference in a worker thread
    (``overlap``), else in line, the batch's tasks shared by ``threads`` threads (see the module docstring).
    ``started``: (the batches, the first batch), read already (in line only)."""
    if overlap:
        _run_overlapped(session, model_input, fetch, ctx, preset, batch_size, fixed_batch, observer)
        return
    helpers = max(threads, 1) - 1
    pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="fcnquant-observe") if helpers else None
    runner = _Runner(session, model_input, fetch, slots=1)
    # the next batch is read by one of the tasks, not beside the inference (a loader thread would take a core
    # from onnxruntime's threads)
    if started is None:
        batches = image_batches(ctx.dataset, preset, ctx.ids, batch_size, fixed_batch, with_masks=False,
                                prefetch=False)
        started = batches, next(batches, None)
    batches, mb = started
    try:
        while mb is not None:
            fetched = runner.run(mb.feed)
            upcoming: list = []
            _share(observer.tasks(mb.ids, mb.images, fetched), partial(_read_next, batches, upcoming), pool, helpers)
            ctx.advance(mb.n)
            mb = upcoming[0]
    finally:
        batches.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _read_next(batches, into: list) -> None:
    into.append(next(batches, None))


def _share(tasks: list[tuple[int, Callable[[], None]]], read_next: Callable[[], None], pool, helpers: int) -> None:
    """Runs ``read_next`` and ``tasks`` ((size, callable)) on this thread and ``helpers`` threads of ``pool``, each
    thread taking the next task when it is free (the largest first, so the threads end together); raises the error
    of the first failing task in ``tasks``' order (``read_next``'s after them), as running them in order would."""
    order = sorted(range(len(tasks)), key=lambda k: -tasks[k][0])
    queue = iter([(len(tasks), read_next)] + [(k, tasks[k][1]) for k in order])
    lock = threading.Lock()
    errors: dict[int, Exception] = {}

    def drain() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                item[1]()
            except Exception as exc:  # every task runs; the first in order is raised, as in a serial run
                errors[item[0]] = exc

    helping = [pool.submit(drain) for _ in range(helpers)] if pool is not None else []
    drain()
    for future in helping:
        future.result()
    if errors:
        raise errors[min(errors)]


def _run_overlapped(session, model_input, fetch, ctx: ShardContext, preset, batch_size, fixed_batch, observer):
    pending: Future | None = None
    pending_n = 0
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnquant-observe")
    runner = _Runner(session, model_input, fetch, slots=2)
    try:
        for mb in image_batches(ctx.dataset, preset, ctx.ids, batch_size, fixed_batch, with_masks=False):
            fetched = runner.run(mb.feed)
            if pending is not None:
                pending.result()
                ctx.advance(pending_n)
            pending = pool.submit(observer.observe, mb.ids, mb.images, fetched)
            pending_n = mb.n
        if pending is not None:
            pending.result()
            ctx.advance(pending_n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Runner:
    """Runs the session into reused output buffers (``slots`` sets, used in turn).

    Fresh output arrays for every image (~120 MB for fcn8s at 320x320) fragment the C heap across threads, and the
    process grew by ~12 MB per image; bound, reused buffers keep the peak memory flat and save the page faults.
    With two slots the observer thread reads one set while onnxruntime writes the other: the caller waits for
    the observation of batch k-1 before submitting batch k, so a slot is never written while it is read.
    """

    def __init__(self, session, model_input: tuple[str, type], fetch: list[str], slots: int) -> None:
        self.session = session
        self.input_name, self.input_type = model_input  # the images are cast to the input's type (float16 too)
        self.fetch = fetch
        self.slots = slots
        self.buffers: list[list[np.ndarray]] = []
        self.shape: tuple[int, ...] | None = None
        self.turn = 0

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if not self.fetch:
            return {}
        images = np.ascontiguousarray(images, dtype=self.input_type)
        if images.shape != self.shape:  # first batch, or a new input shape: let onnxruntime allocate, then reuse
            outputs = self.session.run(self.fetch, {self.input_name: images})
            self.shape = images.shape
            self.buffers = [outputs] + [[np.empty_like(o) for o in outputs] for _ in range(self.slots - 1)]
            self.turn = 1 % self.slots
            return dict(zip(self.fetch, outputs))
        out = self.buffers[self.turn]
        self.turn = (self.turn + 1) % self.slots
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, images)
        for name, buf in zip(self.fetch, out):
            binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.fetch, out))
