"""Executors: run a pass's shard function over image shards (or a task function over items) and return the results.

A pass is written once, as a *shard function* ``fn(ctx, *args) -> result`` that runs its model(s) over the images
``ctx.ids`` of ``ctx.dataset`` and returns a mergeable result (an accumulator, counts, per-image arrays), plus the
merge the pass does on the results in shard order. The executor decides where shards run:

* :class:`LocalExecutor` (the default): in this process, one shard over all the images unless asked otherwise;
* ``fcnquant.distributed.RayExecutor``: one Ray task per shard, model bytes through the object store, retries.

What a shard function may use is :class:`ShardContext`: the shard's ids and dataset, the thread count and
onnxruntime providers of its sessions, the models and shared values by key (paths or bytes locally; fetched from the object store on a cluster), sessions,
and ``advance(n)`` for progress. The same function therefore gives the same result wherever it runs; the
merges are exact, so any number of shards equals one.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

from fcnquant.execute.progress import Progress
from fcnquant.execute.shards import ShardPlan, plan_shards
from fcnquant.runtime import CPU_PROVIDERS, resolve_providers

R = TypeVar("R")

ModelLike = "str | os.PathLike[str] | bytes"


def is_session(obj: Any) -> bool:
    """Returns True for an onnxruntime session (or anything that runs like one)."""
    return hasattr(obj, "run") and hasattr(obj, "get_inputs")


class ShardContext:
    """What a shard function sees: its shard, dataset, threads, providers, models, shared values, and progress.

    ``providers``: the onnxruntime providers list of every session the shard opens (:meth:`session`, or
    ``make_session(..., providers=ctx.providers)`` for a model it builds). ``models`` maps keys to a model path, its bytes, or an open session; ``shared`` to any value the shard reads
    (images, logits). This base class serves them from this process; a cluster's context fetches them.
    """

    def __init__(self, plan: ShardPlan, dataset, *, threads: int = 0, models: Mapping[str, Any] | None = None,
                 shared: Mapping[str, Any] | None = None, advance: Callable[[int], None] | None = None,
                 progress: bool = False, providers: Sequence[str] = CPU_PROVIDERS) -> None:
        self.plan = plan
        self.dataset = dataset
        self.threads = threads
        self.providers = tuple(providers)
        self.progress = progress
        self._models = dict(models or {})
        self._shared = dict(shared or {})
        self._advance = advance
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def ids(self) -> list[str]:
        """The shard's image ids, in order."""
        return list(self.plan.ids)

    @property
    def start(self) -> int:
        """How many images of the whole list come before this shard."""
        return self.plan.start

    def advance(self, n: int) -> None:
        """Reports ``n`` more images done."""
        if self._advance is not None:
            self._advance(n)

    def value(self, key: str) -> Any:
        """Returns the shared value ``key``."""
        return self._shared[key]

    def model(self, key: str) -> Any:
        """Returns the model ``key`` as given: a path, bytes or a session."""
        return self._models[key]

    def model_bytes(self, key: str) -> bytes:
        """Returns the serialized model ``key``."""
        m = self._models[key]
        return m if isinstance(m, bytes) else Path(m).read_bytes()

    def model_path(self, key: str) -> Path:
        """Returns a file holding the model ``key`` (bytes are written to a temporary file once)."""
        m = self._models[key]
        if not isinstance(m, bytes):
            return Path(m)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fcnquant-shard-")
        path = Path(self._tmp.name) / f"{key}.onnx"
        if not path.is_file():
            path.write_bytes(m)
        return path

    def session(self, key: str, **options):
        """Returns an onnxruntime session of the model ``key`` (``fcnquant.runtime.make_session`` options; threads
        and providers default to the context's); a session given as the model is returned as it is."""
        from fcnquant.runtime import make_session

        m = self._models[key]
        if is_session(m):
            return m
        options.setdefault("threads", self.threads)
        options.setdefault("providers", self.providers)
        return make_session(m if isinstance(m, bytes) else Path(m), **options)

    def close(self) -> None:
        """Removes what the context wrote (temporary model files)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class TaskPool(Protocol):
    """Tasks over items rather than image shards (e.g. one candidate model each): ``submit(key, *args)`` then
    ``results()`` -> ``{key: result}``."""

    def submit(self, key: str, *args) -> None: ...

    def results(self) -> dict[str, Any]: ...


class Executor(Protocol):
    """Runs shard functions over image shards (:meth:`map`) and task functions over items (:meth:`pool`);
    ``providers``: the onnxruntime providers list of the sessions its shards open."""

    progress: bool
    providers: tuple[str, ...]

    def map(self, fn: Callable[..., R], dataset, ids: Sequence[str], *, args: tuple = (),
            models: Mapping[str, Any] | None = None, shared: Mapping[str, Any] | None = None, desc: str = "",
            shards: int | None = None) -> list[R]:
        """Returns ``fn(ctx, *args)`` of every shard of ``ids``, in shard order."""
        ...

    def pool(self, fn: Callable[..., Any], *, shared: Mapping[str, Any] | None = None,
             limit: int | None = None) -> contextlib.AbstractContextManager[TaskPool]:
        """Returns a context manager yielding a :class:`TaskPool` running ``fn(ctx, *args)`` per submitted item."""
        ...


class _LocalPool:
    """Runs each submitted task at once, in this process."""

    def __init__(self, fn: Callable[..., Any], ctx: ShardContext) -> None:
        self.fn, self.ctx = fn, ctx
        self._done: dict[str, Any] = {}

    def submit(self, key: str, *args) -> None:
        self._done[key] = self.fn(self.ctx, *args)

    def results(self) -> dict[str, Any]:
        return dict(self._done)


class LocalExecutor:
    """Runs every shard in this process, one after the other.

    ``threads``: onnxruntime intra-op threads of the sessions the passes open (0: onnxruntime decides).
    ``shards``: how many shards to cut an image list into (default 1: one pass over all the images, the fastest
    here; more give the same merged result and exist to test merges). ``progress``: a bar on a terminal, log
    lines otherwise. ``provider``: the onnxruntime execution provider of those sessions (``"cpu"``, the default;
    ``"cuda"``, ``"tensorrt"``, a full onnxruntime name; see ``fcnquant.runtime.resolve_providers``), checked
    against the installed onnxruntime here, before any work (ProviderError).
    """

    def __init__(self, threads: int = 0, *, shards: int = 1, progress: bool = True,
                 provider: str | Sequence[str] | None = None) -> None:
        if threads < 0:
            from fcnquant.errors import FcnquantError

            raise FcnquantError(f"the thread count must be 0 (onnxruntime decides) or more, got {threads}")
        self.threads = threads
        self.shards = shards
        self.progress = progress
        self.providers = resolve_providers(provider)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def describe(self) -> str:
        return "this process"

    def map(self, fn: Callable[..., R], dataset, ids: Sequence[str], *, args: tuple = (),
            models: Mapping[str, Any] | None = None, shared: Mapping[str, Any] | None = None, desc: str = "",
            shards: int | None = None) -> list[R]:
        """Returns ``fn(ctx, *args)`` of every shard of ``ids``, in shard order (see :class:`Executor`)."""
        plans = plan_shards(ids, shards or self.shards, allow_empty=True)
        out: list[R] = []
        with Progress(sum(len(p.ids) for p in plans), desc, enabled=self.progress) as bar:
            for plan in plans:
                ctx = ShardContext(plan, dataset, threads=self.threads, models=models, shared=shared,
                                   advance=bar.update, progress=self.progress, providers=self.providers)
                try:
                    out.append(fn(ctx, *args))
                finally:
                    ctx.close()
        return out

    @contextlib.contextmanager
    def pool(self, fn: Callable[..., Any], *, shared: Mapping[str, Any] | None = None,
             limit: int | None = None) -> Iterator[_LocalPool]:
        """Yields a pool that runs each submitted task at once (see :class:`Executor`)."""
        ctx = ShardContext(ShardPlan(1, 1, ()), None, threads=self.threads, shared=shared,
                           providers=self.providers)
        try:
            yield _LocalPool(fn, ctx)
        finally:
            ctx.close()


def merged(parts: Sequence[R]) -> R:
    """Returns the first of ``parts`` with every other merged into it in order (``a.merge(b)``, in place)."""
    first = parts[0]
    for p in parts[1:]:
        first.merge(p)
    return first
