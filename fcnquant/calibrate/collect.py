"""The collection loop: run a model once per calibration image and stream its activations into observers.

One onnxruntime session runs a copy of the model whose graph also outputs the tensors chosen by
:func:`fcnquant.calibrate.tensors.activation_tensors`. Each batch's outputs go into that tensor's
:class:`~fcnquant.calibrate.stats.TensorStats` (exact min/max + exact bit-pattern histogram).

Speed (fcn8s at 320x320 on 2 shared cores, ``bench/bench_calibrate.py``, ``bench/bench_speed.py``): the exposed
tensors hold ~30 M values per image. The observers read each value once through the compiled kernel
(:mod:`fcnquant.observers.kernel`, ~0.8 ns per value of CPU: ~0.025 s per image; the numpy observers cost
~3.7 ns, ~0.11 s) against ~0.2-0.28 s for the inference itself on an idle machine. What exposing the 20 tensors
costs onnxruntime (profiled, ORT_ENABLE_ALL): one ``ReorderOutput`` per exposed tensor, converting it from the
blocked NCHWc layout its convolutions run in back to NCHW (~3.3 ns per exposed value, ~4 % of the run; it is the
only real cost, and no public option avoids it short of giving up NCHWc, which costs more); the two skip
``Add``s are no longer fused into their convolutions (0.1 ms: 21-channel tensors); fresh output allocation vs
reused buffers: the same CPU time, but see below for memory. The session is built from the model file's bytes
plus a small protobuf patch that adds the outputs (:func:`fcnquant.runtime.outputs_patch`), not from a copied and
re-serialized ModelProto: ~0.2 s of CPU less per calibration (2 % of 32 images). Choices, each measured against
plain inference over the same images:

* Session threads do not spin (``session.intra_op.allow_spinning=0``). Spinning threads keep burning a core
  after ``run`` returns, exactly when numpy needs it: 1.44x plain with spinning, 1.24x without.
* Graph optimisation ``all``: with ``extended`` the whole calibration took 1.23-1.71x plain inference, with
  ``all`` 1.03-1.22x, on these AVX-512 machines (REFERENCE.md saw the opposite on an AVX2-only machine).
* Outputs go into reused buffers (io binding): fresh 120 MB outputs per image fragmented the heap and the
  process grew ~12 MB per image; with reuse the peak is flat (and equal to plain inference's).
* Observers run in a worker thread (``overlap=True``, default) on batch k while onnxruntime runs batch k+1:
  numpy and onnxruntime release the GIL, and the worker fills the time onnxruntime's two intra-op threads leave
  idle at their barriers (one thread: 0.38 s per image, two: 0.24 s). In the least loaded measurement it was
  25 % faster than observing in line; on the machine saturated by other jobs (no idle core to fill) the two
  were within noise of each other (six alternated comparisons at load 2-9, 0.85-1.1x either way). In line
  (``overlap=False``) uses one output buffer set less (~120 MB for fcn8s).

Updates are applied in batch order and the statistics are order-independent anyway, so the result is identical
(bit for bit) with or without the overlap, and for any batch size.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fcnquant._io import file_sha256, load_onnx
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.tensors import activation_tensors
from fcnquant.errors import CalibrationError, DataError, ModelError
from fcnquant.observers import DEFAULT_MANTISSA_BITS, NonFiniteError
from fcnquant.observers.kernel import warm_up
from fcnquant.runtime import input_spec, outputs_patch, with_outputs

log = logging.getLogger(__name__)

# Graph optimisation for the session with exposed tensors. Measured on fcn8s 320x320, onnxruntime 1.32, on the
# project's AVX-512 machines: "all" ran the augmented model at ~1.06x the plain model, "extended" at ~1.3x
# (REFERENCE.md reports the opposite order on an AVX2-only machine: 1.33x vs 1.06x). Override per call.
DEFAULT_OPTIMIZATION = "all"


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (1-based) of ``count`` equal contiguous slices of an id list."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise DataError(f"bad shard {self.index}/{self.count}: shards are numbered 1..n, e.g. 1/4 ... 4/4")

    @classmethod
    def parse(cls, spec: str | Shard | tuple[int, int]) -> Shard:
        """Returns the shard of ``"i/n"`` (1 <= i <= n) or an ``(i, n)`` tuple."""
        if isinstance(spec, Shard):
            return spec
        if isinstance(spec, tuple):
            return cls(int(spec[0]), int(spec[1]))
        try:
            i, n = str(spec).split("/")
            return cls(int(i), int(n))
        except ValueError:
            raise DataError(f"bad shard '{spec}'; expected i/n with 1 <= i <= n, e.g. 2/4") from None

    def select(self, ids: Sequence[str]) -> list[str]:
        """Returns this shard's slice: ``ids[(i-1)*L//n : i*L//n]``; the n slices concatenate back to ``ids``."""
        n_ids = len(ids)
        return list(ids[(self.index - 1) * n_ids // self.count: self.index * n_ids // self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def collect_stats(
    model_path: str | os.PathLike[str],
    dataset,
    ids: Sequence[str] | None,
    preset=None,
    batch_size: int = 1,
    *,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    skip_nonfinite: bool = False,
    shard: str | Shard | tuple[int, int] | None = None,
    progress: bool = True,
    tensors: Sequence[str] | None = None,
    optimization: str = DEFAULT_OPTIMIZATION,
    overlap: bool = True,
    mantissa_bits: int = DEFAULT_MANTISSA_BITS,
    on_images: Callable[[int], None] | None = None,
) -> CalibrationStats:
    """Returns the statistics of the model's activations over the images ``ids`` of ``dataset``.

    ``ids=None`` takes every image of the dataset; ``shard`` ("i/n") then keeps slice i of n (see :class:`Shard`).
    ``preset``: a :class:`~fcnquant.data.Preset`, a preset name, or None for the model's own (metadata
    ``fcnquant.preset``, else ``awesome``); its size follows a fixed model input, else ``size``; ``mean``/``std``
    override the normalisation.
    ``tensors`` overrides which tensors to observe (default :func:`activation_tensors`). ``optimization`` is the
    session's graph optimisation level; ``overlap`` observes batch k in a worker thread while batch k+1 runs
    (same result; see the module docstring for when it helps).
    Each image is run once; batches of ``batch_size`` when the model's batch dimension is dynamic.
    A NaN/Inf activation raises CalibrationError naming the tensor and image(s); with ``skip_nonfinite`` such
    values are left out, counted per tensor in the statistics and reported in a warning.
    ``on_images(n)`` is called as each batch of n images is observed (e.g. a cluster's progress report).
    """
    from fcnquant.data import preset_for_session

    all_ids = list(dataset.ids if ids is None else ids)
    shard = Shard.parse(shard) if shard is not None else None
    run_ids = shard.select(all_ids) if shard else all_ids
    if not run_ids:
        where = f"shard {shard} of {len(all_ids)} image(s)" if shard else "the image list"
        raise DataError(f"no calibration images: {where} is empty")
    known = set(dataset.ids)
    unknown = [i for i in run_ids if i not in known]
    if unknown:
        raise DataError(f"{len(unknown)} image id(s) are not in dataset {dataset.describe()}: {_show(unknown)}")

    model_path = Path(model_path)
    raw, model = _read_model(model_path)
    names = list(activation_tensors(model) if tensors is None else tensors)
    if not names:
        raise ModelError(f"{model_path}: no float activation depends on the model input; nothing to calibrate")
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    fetch = [n for n in names if n not in graph_inputs]  # the input is observed from the batch itself
    if raw is not None:  # the file's bytes + a patch adding the outputs: no copy or re-serialization of the model
        model_sha256 = hashlib.sha256(raw).hexdigest()
        session = make_collect_session(raw + outputs_patch(model, fetch), optimization)
    else:  # weights in external files: the loaded model carries them
        model_sha256 = file_sha256(model_path)
        session = make_collect_session(with_outputs(model, fetch).SerializeToString(), optimization)
    del model, raw  # the protobuf and the bytes (as large as the weights) are not needed during the loop
    input_name, input_shape = input_spec(session)
    preset = preset_for_session(session, preset, size=size, mean=mean, std=std)

    batch_size, fixed_batch = _batching(input_shape, batch_size)
    stats = CalibrationStats.new(
        names, model_sha256=model_sha256, preset=preset.to_dict(), image_ids=run_ids,
        model_name=model_path.name, shard=str(shard) if shard else None, mantissa_bits=mantissa_bits,
        skip_nonfinite=skip_nonfinite,
    )
    observer = _Observer(stats, names, input_name)
    log.info("calibrating %s: %d tensors, %d image(s)%s, preset %s, batch %d", model_path.name, len(names),
             len(run_ids), f" (shard {shard})" if shard else "", preset.describe(), batch_size)
    t0 = time.perf_counter()
    _run(session, input_name, fetch, dataset, preset, run_ids, batch_size, fixed_batch, observer, progress, overlap,
         on_images)
    seconds = time.perf_counter() - t0
    log.info("observed %d image(s) in %.1f s (%.2f images/s)", len(run_ids), seconds, len(run_ids) / seconds)
    observer.report_skipped()
    return stats


def _read_model(path: Path):
    """Returns (the file's bytes, its ModelProto); bytes None when the weights are in external data files."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        raw = path.read_bytes()
        model = onnx.load_from_string(raw)
    except Exception as exc:  # onnx raises DecodeError / various protobuf errors
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model: the graph has no nodes")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None, load_onnx(path)
    return raw, model


def make_collect_session(model: bytes | str | os.PathLike[str], optimization: str = DEFAULT_OPTIMIZATION):
    """Returns a CPU onnxruntime session for collection: ``optimization`` level, intra-op threads not spinning.

    Idle intra-op threads that spin would compete with the observers for the machine's cores.
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ModelError(f"unknown optimization level '{optimization}'; choose one of {', '.join(levels)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not isinstance(model, bytes):
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model with exposed activations: {exc}") from exc


def _batching(input_shape: tuple[int | None, ...], batch_size: int) -> tuple[int, int | None]:
    """Returns (batch size to use, fixed batch dimension or None)."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    fixed = input_shape[0]
    if fixed is None:
        return batch_size, None
    if fixed != batch_size:
        log.info("the model's batch dimension is fixed at %d; using batch size %d", fixed, fixed)
    return fixed, fixed


class _Observer:
    """Feeds one batch's tensors into the statistics, turning NaN/Inf errors into messages with image ids."""

    def __init__(self, stats: CalibrationStats, names: list[str], input_name: str) -> None:
        self.stats = stats
        self.names = names
        self.input_name = input_name
        self.skipped: dict[str, list[str]] = {}  # tensor -> image ids that had NaN/Inf values (skip mode)

    def observe(self, ids: list[str], images: np.ndarray, fetched: dict[str, np.ndarray]) -> None:
        n = len(ids)
        for name in self.names:
            x = images if name == self.input_name else fetched[name]
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

    def report_skipped(self) -> None:
        for name, image_ids in self.skipped.items():
            log.warning("tensor '%s': skipped %d NaN/Inf value(s) on %d image(s): %s", name,
                        self.stats.tensors[name].nonfinite, len(image_ids), _show(image_ids))


def _nonfinite_images(ids: list[str], x: np.ndarray) -> list[str]:
    return [ids[j] for j in range(len(ids)) if not np.isfinite(x[j]).all()]


def _show(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def _run(session, input_name, fetch, dataset, preset, ids, batch_size, fixed_batch, observer, progress, overlap,
         on_images=None):
    from tqdm import tqdm

    from fcnquant.data import iter_batches

    bar = tqdm(total=len(ids), desc="calibrating", unit="img", disable=None if progress else True, leave=False)
    if on_images is not None:
        bar = _Reporting(bar, on_images)
    pending: Future | None = None
    pending_n = 0
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnquant-observe") if overlap else None
    runner = _Runner(session, input_name, fetch, slots=2 if overlap else 1)
    if pool is not None:
        pending = pool.submit(warm_up)  # loads the compiled observer kernels while the first batch runs
    else:
        warm_up()
    try:
        for batch in iter_batches(dataset, preset, ids, batch_size, with_masks=False):
            images = batch.images
            if fixed_batch is not None and images.shape[0] < fixed_batch:
                pad = np.repeat(images[-1:], fixed_batch - images.shape[0], axis=0)
                images = np.concatenate([images, pad])
            fetched = runner.run(images)
            if pool is None:
                observer.observe(batch.ids, batch.images, fetched)
                bar.update(len(batch.ids))
                continue
            if pending is not None:
                pending.result()
                bar.update(pending_n)
            pending = pool.submit(observer.observe, batch.ids, batch.images, fetched)
            pending_n = len(batch.ids)
        if pending is not None:
            pending.result()
            bar.update(pending_n)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


class _Reporting:
    """A progress bar that also tells ``on_images`` how many images each update adds."""

    def __init__(self, bar, on_images: Callable[[int], None]) -> None:
        self.bar, self.on_images = bar, on_images

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.on_images(n)

    def close(self) -> None:
        self.bar.close()


class _Runner:
    """Runs the session into reused output buffers (``slots`` sets, used in turn).

    Fresh output arrays for every image (~120 MB for fcn8s at 320x320) fragment the C heap across threads, and the
    process grew by ~12 MB per image; bound, reused buffers keep the peak memory flat and save the page faults.
    With two slots the observer thread reads one set while onnxruntime writes the other: the caller waits for
    the observation of batch k-1 before submitting batch k, so a slot is never written while it is read.
    """

    def __init__(self, session, input_name: str, fetch: list[str], slots: int) -> None:
        self.session = session
        self.input_name = input_name
        self.fetch = fetch
        self.slots = slots
        self.buffers: list[list[np.ndarray]] = []
        self.shape: tuple[int, ...] | None = None
        self.turn = 0

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if not self.fetch:
            return {}
        images = np.ascontiguousarray(images, dtype=np.float32)
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
