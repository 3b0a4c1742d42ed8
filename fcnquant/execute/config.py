"""How a pass runs: on which executor, with which batch size (:class:`RunConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from fcnquant.errors import DataError
from fcnquant.execute.executor import Executor, LocalExecutor


@dataclass(frozen=True)
class RunConfig:
    """``executor``: where the shards run (default: a :class:`LocalExecutor` with ``threads`` and ``progress``);
    ``batch_size``: images per inference (a model's fixed batch dimension wins)."""

    executor: Executor | None = None
    batch_size: int = 1
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {self.batch_size}")

    @classmethod
    def of(cls, run: "RunConfig | Executor | None") -> "RunConfig":
        """Returns ``run`` as a RunConfig (an executor alone, or None for the defaults)."""
        if isinstance(run, RunConfig):
            return run
        return cls(executor=run)

    def resolved(self) -> Executor:
        """Returns the executor to run on."""
        if self.executor is not None:
            return self.executor
        return LocalExecutor(self.threads, progress=self.progress)

    def with_(self, **changes) -> "RunConfig":
        """Returns a copy with ``changes``."""
        return replace(self, **changes)
