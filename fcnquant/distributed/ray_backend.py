"""The Ray side: the generic shard task, the progress actor and the driver loop that runs shards and gathers them.

Every pass runs through one task, :func:`shard_task`, which calls the pass's shard function with a
:class:`RayShardContext` (the items of the tuner's ranking run through :func:`pool_task`). Each shard is one Ray task (``num_cpus=1``, ``max_retries=3``: a worker process that dies mid-shard, e.g. killed
or out of memory, is rerun from the start of its shard; the driver keeps one result per shard). The model's bytes
are put in Ray's object store once by the driver; a worker process fetches them when it needs that model and keeps
an onnxruntime session for evaluation (collection writes a local file for the shard, removed when it ends), so only
the data must be on storage every node reads at the same path. Before any work, a task checks it can read every file
of its shard and fails naming the node and the path.

Workers report ``start`` (node, pid) and every observed batch to one :class:`Progress` actor (``num_cpus=0``);
the driver polls it for the single progress bar. The actor is created once per connection and reset for every run:
an actor is a worker process of its own, and starting one per run (a Python process importing Ray) took as much CPU
as the shards of a small model on a 2-core machine (3.5 s instead of 0.9 s for 32 demo images). A retried shard
reports ``start`` again and its count restarts from 0, so the bar never counts an image twice. On Ctrl-C (or a failed shard) the driver cancels every unfinished
task (``ray.cancel(force=True)``) before raising, and nothing has been written: artifacts are written by the
caller, after the merge.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ray

from fcnquant.execute import Progress as ProgressDisplay
from fcnquant.execute import ShardContext, ShardPlan, ShardResults
from fcnquant.errors import DataError, FcnquantError
from fcnquant.runtime import CPU_PROVIDERS

log = logging.getLogger(__name__)

MAX_RETRIES = 3
PROGRESS_ACTOR_PREFIX = "fcnquant-progress-"
_POLL_S = 0.2


@dataclass(frozen=True)
class ShardReport:
    """How one shard ran: images, seconds of work in its task, node, worker pid and attempts (2+ after a retry)."""

    index: int
    count: int
    images: int
    seconds: float
    node: str
    pid: int
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return {"shard": f"{self.index}/{self.count}", "images": self.images, "seconds": round(self.seconds, 3),
                "node": self.node, "pid": self.pid, "attempts": self.attempts}


@ray.remote(num_cpus=0)
class Progress:
    """Counts the images every shard has done in its current attempt, and where each attempt ran."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}
        self.starts: dict[int, list[tuple[str, int]]] = {}

    def reset(self) -> bool:
        """Forgets the previous run (the driver runs one at a time)."""
        self.done, self.starts = {}, {}
        return True

    def start(self, shard: int, node: str, pid: int) -> None:
        self.starts.setdefault(shard, []).append((node, pid))
        self.done[shard] = 0

    def add(self, shard: int, n: int) -> None:
        self.done[shard] = self.done.get(shard, 0) + n

    def snapshot(self) -> tuple[int, dict[int, int], dict[int, list[tuple[str, int]]]]:
        return sum(self.done.values()), dict(self.done), {k: list(v) for k, v in self.starts.items()}


# ----------------------------------------------------------------------------------------------- worker side

_SESSIONS: dict[tuple, Any] = {}     # (sha256, options) -> onnxruntime session, the most recent MAX_SESSIONS
MAX_SESSIONS = 2  # compare holds two models; tune evaluates a new candidate each time (older ones are dropped)


def node_name() -> str:
    """Returns ``"IP (hostname, node ID8)"`` of the node this process runs on (two nodes may share an IP)."""
    try:
        ip, node = ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # not connected: a plain process
        ip, node = "?", "?"
    return f"{ip} ({socket.gethostname()}, node {node})"


def model_bytes(sha256: str, model_ref: list) -> bytes:
    """Returns the model's bytes from the object store, checked against ``sha256``."""
    raw = ray.get(model_ref[0])
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise FcnquantError(f"model bytes from the object store do not match sha256 {sha256[:12]} on {node_name()}")
    return raw


def session(sha256: str, model_ref: list, **options):
    """Returns this worker process's onnxruntime session of the model with ``make_session`` ``options`` (created
    once)."""
    from fcnquant.runtime import make_session

    key = (sha256, tuple(sorted(options.items())))
    sess = _SESSIONS.pop(key, None)
    if sess is None:
        while len(_SESSIONS) >= MAX_SESSIONS:
            del _SESSIONS[next(iter(_SESSIONS))]  # the least recently used
        sess = make_session(model_bytes(sha256, model_ref), **options)
    _SESSIONS[key] = sess  # re-inserted: most recently used last
    return sess


def task_cpus() -> int:
    """Returns the number of CPUs Ray assigned to the running task (at least 1)."""
    try:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:
        return 1


def check_readable(dataset, ids: Sequence[str], shard: str) -> None:
    """Raises DataError naming this node and the first file of ``ids`` it cannot read."""
    for i in ids:
        paths = [dataset.images[i]] + ([dataset.masks[i]] if dataset.masks is not None else [])
        for p in paths:
            if not os.path.isfile(p) or not os.access(p, os.R_OK):
                reason = "no such file" if not os.path.exists(p) else "not readable"
                raise DataError(f"node {node_name()} cannot read {p} ({reason}; shard {shard}): the data must be "
                                "on storage every node of the cluster reads at the same path")


class RayShardContext(ShardContext):
    """A shard's context on a worker: models and shared values fetched from the object store once per process."""

    def __init__(self, plan: ShardPlan, dataset, *, threads: int, models: dict, shared: dict, advance,
                 providers: Sequence[str] = CPU_PROVIDERS) -> None:
        super().__init__(plan, dataset, threads=threads, advance=advance, providers=providers)
        self._model_refs = models  # key -> (sha256, [ref])
        self._shared_refs = shared  # key -> [ref]

    def value(self, key: str):
        return ray.get(self._shared_refs[key][0])

    def model(self, key: str):
        return self.model_bytes(key)

    def model_bytes(self, key: str) -> bytes:
        sha, ref = self._model_refs[key]
        return model_bytes(sha, ref)

    def model_path(self, key: str) -> Path:
        """Returns a file holding the model ``key``, in the shard's temporary folder (removed when the shard
        ends, so a worker process, however it ends, leaves no model copy behind)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fcnquant-shard-")
        path = Path(self._tmp.name) / f"{key}.onnx"
        if not path.is_file():
            path.write_bytes(self.model_bytes(key))
        return path

    def session(self, key: str, **options):
        sha, ref = self._model_refs[key]
        options.setdefault("threads", self.threads)
        options.setdefault("providers", self.providers)
        return session(sha, ref, **options)


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES)
def shard_task(fn, plan: ShardPlan, dataset, args: tuple, models: dict, shared: dict, threads: int,
               providers: tuple, progress) -> dict:
    """Runs one shard of a pass: ``fn(ctx, *args)`` on this worker; returns its result and how it ran."""
    node, pid = node_name(), os.getpid()
    progress.start.remote(plan.index, node, pid)
    if dataset is not None:
        check_readable(dataset, plan.ids, plan.label)
    ctx = RayShardContext(plan, dataset, threads=threads or task_cpus(), models=models, shared=shared,
                          advance=lambda n: progress.add.remote(plan.index, n), providers=providers)
    t0 = time.perf_counter()
    try:
        result = fn(ctx, *args)
    finally:
        ctx.close()
    return {"result": result, "seconds": time.perf_counter() - t0, "node": node, "pid": pid}


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES)
def pool_task(fn, args: tuple, shared: dict, threads: int, providers: tuple):
    """Runs one item's task ``fn(ctx, *args)`` (e.g. one candidate model of the tuner's ranking)."""
    ctx = RayShardContext(ShardPlan(1, 1, ()), None, threads=threads or task_cpus(), models={}, shared=shared,
                          advance=None, providers=providers)
    try:
        return fn(ctx, *args)
    finally:
        ctx.close()


# ----------------------------------------------------------------------------------------------- driver side

def run_shards(task, jobs: Sequence[tuple[ShardPlan, tuple]], *, desc: str, progress: bool = True
               ) -> tuple[list[Any], list[ShardReport]]:
    """Runs ``task(*args, progress_actor)`` for every shard's ``(plan, args)``; returns (results in shard order,
    reports).

    One progress bar over all images. A failed shard (after Ray's retries of dead workers) or Ctrl-C cancels every
    unfinished shard and raises: the shard's own FcnquantError (e.g. the DataError naming node and path) or the
    KeyboardInterrupt.
    """
    actor = progress_actor()
    plans = [plan for plan, _ in jobs]
    refs = {task.remote(*args, actor): plan for plan, args in jobs}
    results: ShardResults[dict] = ShardResults(len(plans))
    total = sum(len(p.ids) for p in plans)
    pending = list(refs)
    bar = ProgressDisplay(total, desc, enabled=progress)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
            for ref in ready:
                results.add(refs[ref].index, get_result(ref))
            if progress:
                bar.set(_snapshot(actor)[0])
        _, _, starts = _snapshot(actor)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    outs = results.ordered()
    reports = [ShardReport(p.index, p.count, len(p.ids), o["seconds"], o["node"], o["pid"],
                           len(starts.get(p.index, [])) or 1) for p, o in zip(plans, outs)]
    for r in reports:
        log.info("shard %d/%d: %d image(s) in %.1f s on node %s (pid %d%s)", r.index, r.count, r.images, r.seconds,
                 r.node, r.pid, f", attempt {r.attempts}" if r.attempts > 1 else "")
    return [o["result"] for o in outs], reports


_ACTOR: list = []  # this driver's Progress actor, while its connection lasts


def progress_actor():
    """Returns this driver's Progress actor, reset for a new run (created on first use or after a reconnect)."""
    if _ACTOR:
        try:
            ray.get(_ACTOR[0].reset.remote(), timeout=30)
            return _ACTOR[0]
        except Exception:  # a handle from an earlier connection (ray.shutdown + init), or the actor died
            _ACTOR.clear()
    actor = Progress.options(name=PROGRESS_ACTOR_PREFIX + uuid.uuid4().hex[:12]).remote()
    ray.get(actor.reset.remote(), timeout=120)
    _ACTOR.append(actor)
    return actor


def _snapshot(actor) -> tuple[int, dict, dict]:
    """Returns the progress actor's snapshot; empty if the actor is gone (progress is only for display)."""
    try:
        return ray.get(actor.snapshot.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return 0, {}, {}


def get_result(ref):
    """Returns the task's result; a shard's FcnquantError is raised as itself (with the worker's message)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FcnquantError):
            raise cause from None
        raise FcnquantError(f"a shard failed on the cluster: {str(exc).strip().splitlines()[-1]}") from exc
    except ray.exceptions.WorkerCrashedError as exc:
        raise FcnquantError(f"a shard's worker died {MAX_RETRIES + 1} times; giving up: {exc}") from exc
