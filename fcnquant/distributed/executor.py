"""The Ray executor: a pass's shards as Ray tasks, merged by the pass exactly as in one process.

    from fcnquant.distributed import RayExecutor
    with RayExecutor("auto", shards=8) as ex:            # joins the cluster `ray start` runs here
        result = fcnquant.evaluate("fcn8s.int8.onnx", executor=ex)

``address``: ``"local"`` (default) starts a local Ray instance (listening on 127.0.0.1 only, no dashboard) for the
executor's lifetime; ``"auto"`` or ``"HOST:PORT"`` joins a running cluster (:mod:`fcnquant.distributed.cluster`).
Used as a context manager the executor keeps one connection for every pass run in it; otherwise each call
connects and disconnects. ``shards`` defaults to the cluster's CPU count. Model bytes go through the object store
once per connection; the data must be on storage every node reads at the same path.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from fcnquant.distributed.cluster import LOCAL, cluster_cpus, ray_session
from fcnquant.errors import FcnquantError, ModelError
from fcnquant.execute import is_session, plan_shards, shard_dataset
from fcnquant.runtime import resolve_providers


class RayExecutor:
    """Runs shard functions as Ray tasks (see module). ``threads``: onnxruntime threads per task (0: the task's
    CPUs); ``progress``: one bar (or log lines) over all shards; ``provider``: onnxruntime's execution provider of
    the workers' sessions (as ``LocalExecutor``'s; checked against this process's onnxruntime, so the workers need
    the same build)."""

    def __init__(self, address: str | None = LOCAL, *, shards: int | None = None, threads: int = 0,
                 progress: bool = True, provider: str | Sequence[str] | None = None) -> None:
        if shards is not None and shards < 1:
            raise FcnquantError(f"the number of shards must be at least 1, got {shards}")
        if threads < 0:
            raise FcnquantError(f"the thread count must be 0 (onnxruntime decides) or more, got {threads}")
        self.address = address
        self.shards = shards
        self.threads = threads
        self.progress = progress
        self.providers = resolve_providers(provider)
        self.reports: tuple = ()  # the last map's ShardReports
        self.seconds = 0.0
        self._stack: contextlib.ExitStack | None = None
        self._depth = 0  # nested `with` blocks: the connection closes when the outermost one ends
        self._ray = None
        self._puts: dict[str, list] = {}  # sha256 -> [object ref] of model bytes put during this connection

    def describe(self) -> str:
        return f"Ray ({self.address or LOCAL})"

    def __enter__(self) -> "RayExecutor":
        if self._depth == 0:
            stack = contextlib.ExitStack()
            self._ray = stack.enter_context(ray_session(self.address))
            self._stack = stack
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        stack, self._stack, self._ray = self._stack, None, None
        self._puts.clear()
        if stack is not None:
            stack.__exit__(*exc)

    @contextlib.contextmanager
    def _connected(self) -> Iterator[Any]:
        if self._ray is not None:
            yield self._ray
            return
        with self:
            yield self._ray

    def _put_model(self, model) -> tuple[str, list]:
        if is_session(model):
            raise ModelError("a Ray executor needs a model file or bytes, not an open session")
        if isinstance(model, bytes):
            raw = model
        else:
            p = Path(model)
            if not p.is_file():
                raise ModelError(f"model file not found: {p}")
            raw = p.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        if sha not in self._puts:
            self._puts[sha] = [self._ray.put(raw)]
        return sha, self._puts[sha]

    def map(self, fn: Callable[..., Any], dataset, ids: Sequence[str], *, args: tuple = (),
            models: Mapping[str, Any] | None = None, shared: Mapping[str, Any] | None = None, desc: str = "",
            shards: int | None = None) -> list:
        """Returns ``fn(ctx, *args)`` of every shard of ``ids`` run as Ray tasks, in shard order."""
        from fcnquant.distributed import ray_backend as rb

        with self._connected() as ray:
            t0 = time.perf_counter()
            count = shards or self.shards or cluster_cpus(ray)
            plans = plan_shards(ids, count)
            model_refs = {k: self._put_model(m) for k, m in (models or {}).items()}
            shared_refs = {k: [ray.put(v)] for k, v in (shared or {}).items()}
            jobs = [(p, (fn, p, shard_dataset(dataset, p.ids) if dataset is not None else None, tuple(args),
                         model_refs, shared_refs, self.threads, self.providers)) for p in plans]
            outs, reports = rb.run_shards(rb.shard_task, jobs, desc=f"{desc} (ray)" if desc else "ray",
                                          progress=self.progress)
            self.reports, self.seconds = tuple(reports), time.perf_counter() - t0
        return outs

    @contextlib.contextmanager
    def pool(self, fn: Callable[..., Any], *, shared: Mapping[str, Any] | None = None,
             limit: int | None = None) -> Iterator["_RayPool"]:
        """Yields a pool running ``fn(ctx, *args)`` as one Ray task per submitted item (at most ``limit`` in
        flight, default twice the cluster's CPUs); unfinished tasks are cancelled on exit."""
        with self._connected() as ray:
            shared_refs = {k: [ray.put(v)] for k, v in (shared or {}).items()}
            pool = _RayPool(ray, fn, shared_refs, (self.threads, self.providers), limit or 2 * cluster_cpus(ray))
            try:
                yield pool
            finally:
                pool.cancel()


class _RayPool:
    def __init__(self, ray, fn, shared_refs: dict, settings: tuple, limit: int) -> None:
        self._ray, self._fn, self._shared, self._limit = ray, fn, shared_refs, limit
        self._threads, self._providers = settings
        self._pending: dict = {}
        self._done: dict[str, Any] = {}

    def submit(self, key: str, *args) -> None:
        """Sends one item's task (its arguments are serialized now)."""
        from fcnquant.distributed.ray_backend import pool_task

        while len(self._pending) >= self._limit:
            self._collect()
        ref = pool_task.remote(self._fn, tuple(args), self._shared, self._threads, self._providers)
        self._pending[ref] = key

    def results(self) -> dict[str, Any]:
        """Waits for every submitted item; returns {key: result}."""
        while self._pending:
            self._collect()
        return dict(self._done)

    def _collect(self) -> None:
        from fcnquant.distributed.ray_backend import get_result

        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        for ref in ready:
            key = self._pending.pop(ref)
            self._done[key] = get_result(ref)

    def cancel(self) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
