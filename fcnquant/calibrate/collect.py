"""The collection loop: run a model once per calibration image and stream its activations into observers.

One onnxruntime session runs a copy of the model whose graph also outputs the tensors chosen by
:func:`fcnquant.calibrate.tensors.activation_tensors`. Each batch's outputs go into that tensor's
:class:`~fcnquant.calibrate.stats.TensorStats` (exact min/max + exact bit-pattern histogram).

Speed (fcn8s at 320x320 on 2 shared cores, ``bench/bench_calibrate.py``, ``bench/bench_speed.py``): the exposed
tensors hold ~30 M values per image. The observers read each value once through the compiled kernel
(:mod:`fcnquant.observers.kernel`, ~0.77 ns per value of CPU: ~0.023 s per image; the numpy observers, used
where the extension is not built, ~2.6 ns, ~0.08 s) against ~0.34 s for the inference itself on an idle machine.
What exposing the 20 tensors costs onnxruntime (profiled, ORT_ENABLE_ALL): one ``ReorderOutput`` per exposed
tensor, converting it from the blocked NCHWc layout its convolutions run in back to NCHW (~3.3 ns per exposed
value, ~4 % of the run; it is the only real cost, and no public option avoids it short of giving up NCHWc, which
costs more); the two skip ``Add``s are no longer fused into their convolutions (0.1 ms: 21-channel tensors); fresh
output allocation vs reused buffers: the same CPU time, but see below for memory. The session is built from the
model's structure, its large weights referred to where they lie in the model file
(:func:`fcnquant.graph.weights_by_reference`), plus a small protobuf patch that adds the outputs
(:func:`fcnquant.runtime.outputs_patch`), not from a copied and re-serialized ModelProto (which cost ~0.2 s of CPU
more per calibration); the model's structure is read without its weights (:func:`fcnquant.graph.parse_without_weights`).
Choices, each measured against plain inference over the same images:

* Session threads do not spin (``session.intra_op.allow_spinning=0``). Spinning threads keep burning a core
  after ``run`` returns, exactly when numpy needs it: 1.44x plain with spinning, 1.24x without.
* Graph optimisation ``all``: with ``extended`` the whole calibration took 1.23-1.71x plain inference, with
  ``all`` 1.03-1.22x, on these AVX-512 machines (on an AVX2-only machine the order was measured the other way).
* Outputs go into reused buffers (io binding): fresh 120 MB outputs per image fragmented the heap and the
  process grew ~12 MB per image; with reuse the peak is flat (and equal to plain inference's).
* On the CPU (``overlap=None``, the default, resolves to in line there) the observers run in line, between two
  runs: a batch's tensor updates are tasks that ``threads`` threads (the cores this process may use, at most 4)
  take, largest first, one of them also reading the next batch (the loader's prefetch thread, which ran beside
  the inference, is off). Both the compiled kernel (``nogil``) and numpy's ``add.at`` release the GIL, so the
  threads run at once. The overlap (``overlap=True``: a worker thread observes batch k while onnxruntime runs
  batch k+1, the default before) took a core from onnxruntime's two intra-op threads, whose barriers then wait
  for it: on the AVX2 machine the session ran 0.439 s per image inside calibrate against 0.35-0.36 s alone,
  ~0.08 s lost per image for ~0.029 s of the kernel's CPU time. In line the run keeps both cores and the
  observation takes about half its CPU time; with one image (numpy observers, ~0.11 s of CPU) the main thread
  no longer waits for a single observer thread (an earlier measurement, with the numpy observers at ~0.11 s per
  image on one in-line thread, had found the overlap 25 % faster). On an accelerator the overlap stays the default: the cores are
  free while the device computes. In line uses one output buffer set less (~120 MB for fcn8s). Whole
  ``calibrate --method kl --out-table`` processes on the idle AVX2 machine, alternated with the overlapping loop
  (which also read the model file before copying it): 32 images best 12.95 s against 13.36 s, plain onnxruntime
  11.74 s (1.10x against 1.14x); one image 1.22 s against 1.34 s, plain 0.72 s (the observation of one image on
  two threads: 0.08 s instead of ~0.12 s).
* The first batch is read while onnxruntime builds the session (which leaves a core idle), for the preset and
  batch size the model's declarations give; a guess the session contradicts is read again.
* The model file is mapped, not read, and onnxruntime reads the weights from the file itself: no copy of the
  file is made in memory (on this VM a fresh 60 MB buffer costs ~0.05 s of page faults). Building fcn8s's
  session from the file's bytes with the outputs patch appended took 0.143 s (0.197 s of CPU), from the
  structure with its weights by reference 0.047 s (0.086 s), medians of 5 in one process; whole one-image
  ``calibrate --method kl --out-table`` processes, 7 alternated pairs: best 1.16 s against 1.31 s.

Updates are applied in batch order and the statistics are order-independent anyway, so the result is identical
(bit for bit) with or without the overlap, on any number of threads, and for any batch size.
"""
from __future__ import annotations

import logging
import mmap
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence


from fcnquant._io import load_onnx, model_digests, model_identity
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.observe_loop import _Observer, _run
from fcnquant.calibrate.tensors import activation_tensors
from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import DataError, ModelError
from fcnquant.execute import Executor, LocalExecutor, RunConfig, Shard, ShardContext, image_batches, resolve_batch
from fcnquant.observers import DEFAULT_MANTISSA_BITS
from fcnquant.graph import parse_without_weights, require_float, weights_by_reference
from fcnquant.runtime import CPU_PROVIDERS, input_dtype, input_spec, make_session, outputs_patch, with_outputs

log = logging.getLogger(__name__)

# Graph optimisation for the session with exposed tensors. Measured on fcn8s 320x320, onnxruntime 1.32, on the
# project's AVX-512 machines: "all" ran the augmented model at ~1.06x the plain model, "extended" at ~1.3x
# (on an AVX2-only machine the order was the opposite: 1.33x vs 1.06x). Override per call.
DEFAULT_OPTIMIZATION = "all"


@dataclass(frozen=True)
class CollectOptions:
    """How statistics are collected.

    ``tensors`` overrides which tensors to observe (default :func:`activation_tensors`). ``skip_nonfinite``: leave
    NaN/Inf values out (counted per tensor and reported in a warning) instead of failing. ``optimization``: the
    session's graph optimisation level. ``overlap``: observe batch k in a worker thread while batch k+1 runs (True)
    or in line between the runs, a batch's tensors shared by ``threads`` threads (False); None (default): overlap
    when the session runs on an accelerator, in line on the CPU (see the module docstring). ``threads``: None
    (default) the CPU cores this process may use, at most 4. ``mantissa_bits``: the histogram's resolution.
    ``compiled``: observe through the compiled kernel where it is built (True or None, the default) or numpy
    (False). The statistics are the same bit for bit either way.
    """

    tensors: tuple[str, ...] | None = None
    skip_nonfinite: bool = False
    optimization: str = DEFAULT_OPTIMIZATION
    overlap: bool | None = None
    mantissa_bits: int = DEFAULT_MANTISSA_BITS
    compiled: bool | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.tensors is not None and not isinstance(self.tensors, tuple):
            object.__setattr__(self, "tensors", tuple(self.tensors))
        if self.threads is not None and self.threads < 1:
            raise DataError(f"observer threads must be at least 1, got {self.threads}")

    def overlapped(self, providers: Sequence[str]) -> bool:
        """Returns whether observing overlaps the inference for a session on ``providers`` (see ``overlap``)."""
        if self.overlap is not None:
            return self.overlap
        return bool(providers) and providers[0] != CPU_PROVIDERS[0]

    def observer_threads(self) -> int:
        """Returns the threads that share a batch's observation in line (see ``threads``)."""
        if self.threads is not None:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, 4))


def collect_stats(
    model_path: str | os.PathLike[str],
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: CollectOptions | None = None,
    *,
    shard: str | Shard | tuple[int, int] | None = None,
) -> CalibrationStats:
    """Returns the statistics of the model's activations over the calibration images of ``data``.

    ``data``: a :class:`~fcnquant.data.DataConfig` (or a dataset root or open ``Dataset``, all of its images);
    its ``ids``, else a seeded selection of ``num_images`` (all images when None); its preset, else the model's
    own (metadata ``fcnquant.preset``, else ``awesome``), the size following a fixed model input. ``shard``
    ("i/n") keeps slice i of n of those images (see :class:`~fcnquant.execute.Shard`). ``run``: executor and
    batch size; on a Ray executor the shards' statistics merge exactly (bit for bit the one-process result).
    Each image is run once. A NaN/Inf activation raises CalibrationError naming the tensor and image(s) unless
    ``options.skip_nonfinite``.
    """
    return collect_with_extra(model_path, data, run, options, shard=shard)[0]


def collect_with_extra(
    model_path: str | os.PathLike[str],
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: CollectOptions | None = None,
    extra: Mapping[Any, tuple[str, Callable[[bool], Any]]] | None = None,
    *,
    shard: str | Shard | tuple[int, int] | None = None,
) -> tuple[CalibrationStats, dict]:
    """Returns (the statistics :func:`collect_stats` returns, {key: accumulator} of ``extra``) from the same pass.

    ``extra``: {key: (tensor, make)}: ``make(record)`` returns an accumulator with ``update(x)`` (the batch's
    values of ``tensor``, real images only) and ``merge(other)`` (the images after its own); ``record`` is True
    in a shard after the first, for accumulators that merge bit for bit (``fcnquant.recover.ordered_sum``). The
    extra tensors are fetched beside the observed ones and cost their exposure only. A recovery pass's statistics
    of the float model ride on the calibration pass this way instead of a pass of their own.
    """
    cfg, run = DataConfig.of(data, split=None), RunConfig.of(run)
    options = options or CollectOptions()
    executor = run.resolved()
    model_path = Path(model_path)
    dataset = cfg.open(model_path, progress=executor.progress)
    all_ids = cfg.choose(dataset, progress=executor.progress)
    shard = Shard.parse(shard) if shard is not None else None
    run_ids = shard.select(all_ids) if shard else all_ids
    if not run_ids:
        where = f"shard {shard} of {len(all_ids)} image(s)" if shard else "the image list"
        raise DataError(f"no calibration images: {where} is empty")
    if shard is not None and not isinstance(executor, LocalExecutor):
        raise DataError("--shard collects one slice in this process; --ray runs every shard on the cluster: "
                        "give one of them")
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    parts = executor.map(collect_shard, dataset, run_ids,
                         args=(cfg, run.batch_size, options, model_path.name, str(shard) if shard else None,
                               dict(extra or {})),
                         models={"model": model_path}, desc="calibrating")
    stats_parts, extras = [p[0] for p in parts], [p[1] for p in parts]
    merged_extra = extras[0]
    for more in extras[1:]:
        for key, acc in more.items():
            merged_extra[key].merge(acc)
    if len(parts) == 1:
        return stats_parts[0], merged_extra
    from fcnquant.calibrate.stats_wire import merge_wire, stats_to_wire

    return merge_wire([stats_to_wire(p) for p in stats_parts], model_path.name), merged_extra


def collect_shard(ctx: ShardContext, data: DataConfig, batch_size: int, options: CollectOptions, model_name: str,
                  shard: str | None, extra: dict | None = None) -> tuple[CalibrationStats, dict]:
    """Returns (the statistics of the model ``"model"`` over the shard's images, {key: accumulator} of ``extra``
    (:func:`collect_with_extra`)) (a shard function)."""
    model_path = ctx.model_path("model")
    run_ids = ctx.ids
    raw, model = _read_model(model_path)
    require_float(model, model_name, "calibrate")
    names = list(activation_tensors(model) if options.tensors is None else options.tensors)
    if not names:
        raise ModelError(f"{model_name}: no float activation depends on the model input; nothing to calibrate")
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    fetch = [n for n in names if n not in graph_inputs]  # the input is observed from the batch itself
    accs = {key: (tensor, make(ctx.start > 0)) for key, (tensor, make) in (extra or {}).items()}
    fetch += [t for t in dict.fromkeys(t for t, _ in accs.values()) if t not in fetch and t not in graph_inputs]
    # the first batch is read on the core onnxruntime's session build leaves, for the preset and batch size the
    # model's declarations give (checked below)
    overlap = options.overlapped(ctx.providers)
    reading = None if overlap else _aside(partial(_read_first, ctx, data, _ModelInputs(model), batch_size))
    session, model_sha256 = _open_session(model_path, raw, model, fetch, options.optimization, ctx)
    del model, raw  # the protobuf and the bytes (as large as the weights) are not needed during the loop
    input_name, input_shape = input_spec(session)
    input_type = input_dtype(session)
    preset = data.preset_for(session)

    batch_size, fixed_batch = resolve_batch(batch_size, input_shape[0])
    new_stats = partial(
        CalibrationStats.new, names, model_sha256=model_sha256, preset=preset.to_dict(), image_ids=run_ids,
        model_name=model_name, shard=shard, mantissa_bits=options.mantissa_bits,
        skip_nonfinite=options.skip_nonfinite,
    )
    observer = _Observer(new_stats, names, input_name, accs, compiled=options.compiled)
    log.info("calibrating %s: %d tensors, %d image(s)%s, preset %s, batch %d", model_name, len(names),
             len(run_ids), f" (shard {shard})" if shard else "", preset.describe(), batch_size)
    t0 = time.perf_counter()
    started = _started(reading, (preset, batch_size, fixed_batch))
    _run(session, (input_name, input_type), fetch, ctx, preset, batch_size, fixed_batch, observer, overlap,
         options.observer_threads(), started)
    seconds = time.perf_counter() - t0
    log.info("observed %d image(s) in %.1f s (%.2f images/s)", len(run_ids), seconds, len(run_ids) / seconds)
    observer.report_skipped()
    return observer.result(), {key: acc for key, (_, acc) in accs.items()}


class _ModelInputs:
    """What choosing the preset and the batch size reads of a session (its metadata, its inputs), read from the
    ModelProto: the first batch is read while onnxruntime builds the session."""

    def __init__(self, model) -> None:
        self.meta = {p.key: p.value for p in model.metadata_props}
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [
            SimpleNamespace(name=i.name, shape=[d.dim_value if d.HasField("dim_value") else None
                                                for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input if i.name not in inits]

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map=self.meta)

    def get_inputs(self) -> list:
        return self.inputs


def _read_first(ctx: ShardContext, data: DataConfig, facts: _ModelInputs, batch_size: int):
    """Returns ((preset, batch size, fixed batch), the shard's batches, the first batch) for the model ``facts``
    describes (as :func:`~fcnquant.execute.resolve_batch` chooses, without its log line)."""
    preset = data.preset_for(facts)
    fixed = input_spec(facts)[1][0]
    batching = (preset, batch_size if fixed is None else fixed, fixed)
    batches = image_batches(ctx.dataset, preset, ctx.ids, batching[1], fixed, with_masks=False, prefetch=False)
    return batching, batches, next(batches, None)


def _started(reading: Future | None, batching: tuple) -> tuple | None:
    """Returns (the batches, the first batch) :func:`_read_first` read, when it chose the ``batching`` (preset,
    batch size, fixed batch) the session gives; None otherwise (or when it failed: the loop reads again, and
    raises the error at its own time)."""
    if reading is None:
        return None
    try:
        guessed, batches, first = reading.result()
    except Exception:  # e.g. an unreadable image: the same error comes from the loop's own read
        return None
    if guessed != batching:
        batches.close()
        return None
    return batches, first


def _aside(fn: Callable[[], Any]) -> Future:
    """Returns the future of ``fn()`` run in a thread of its own (which ends when ``fn`` returns)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnquant-aside")
    try:
        return pool.submit(fn)
    finally:
        pool.shutdown(wait=False)


def _open_session(model_path: Path, raw: mmap.mmap | bytes | None, model, fetch: list[str], optimization: str,
                  ctx: ShardContext):
    """Returns (the session of the model with ``fetch`` as extra outputs, the model's identity digest).

    The session's threads do not spin (see the module docstring) and no onnxruntime transformer is turned off.
    ``raw``: the file mapped into memory (:func:`_read_model`), closed here. The session is built from the model's
    structure with its weights referred to in the file (:func:`fcnquant.graph.weights_by_reference`, a few kB) and
    a patch appending the outputs: onnxruntime reads the weights from the file, and no copy of the file is made in
    memory; should onnxruntime refuse that form, from the file's bytes with the patch appended. The digest (sha256 of
    the file's bytes, ~0.04 s for a 60 MB model) is computed in a thread while onnxruntime builds the session,
    which releases the GIL.
    """
    def build(model_bytes: bytes, weights_dir: Path | None = None):
        return make_session(model_bytes, optimization=optimization, disabled_optimizers=(), spinning=False,
                            threads=ctx.threads, providers=ctx.providers, weights_dir=weights_dir)

    if raw is None:  # weights in external files: the loaded model carries them
        return build(with_outputs(model, fetch).SerializeToString()), model_identity(model_path)
    patch = outputs_patch(model, fetch)
    view = memoryview(raw)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnquant-digest") as pool:
            digest = pool.submit(model_digests, model_path, view, model)
            try:
                session = build(weights_by_reference(view, model_path.name) + patch, model_path.parent)
            except ModelError as exc:
                log.debug("onnxruntime refused the weights by reference (%s); building from the file's bytes", exc)
                session = build(b"".join((view, patch)))
            return session, digest.result()[0]
    finally:
        _close(raw, view)


def _read_model(path: Path):
    """Returns (the file's bytes, mapped into memory, read-only; its ModelProto without the data of its large
    weights: the session is built from the bytes); bytes None and the whole model when the weights are in external
    data files."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        raw = _mapped(path)
        model = parse_without_weights(raw)
    except Exception as exc:  # onnx raises DecodeError / various protobuf errors
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model: the graph has no nodes")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        _close(raw)
        return None, load_onnx(path)
    return raw, model


def _mapped(path: Path) -> mmap.mmap | bytes:
    """Returns the bytes of the file ``path`` mapped into memory (b"" for an empty file, which cannot be mapped)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _close(raw, view: memoryview | None = None) -> None:
    """Releases ``view`` (of ``raw``) and unmaps the bytes :func:`_mapped` returned (nothing for bytes); a mapping
    still viewed elsewhere is left to be unmapped when its last view goes."""
    try:
        if view is not None:
            view.release()
        if isinstance(raw, mmap.mmap):
            raw.close()
    except BufferError:
        pass
