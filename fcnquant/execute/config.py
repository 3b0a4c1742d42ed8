"""How a pass runs: on which executor and execution provider, with which batch size (:class:`RunConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from fcnquant.errors import DataError, ProviderError
from fcnquant.execute.executor import Executor, LocalExecutor
from fcnquant.runtime import CPU_PROVIDERS, resolve_providers


@dataclass(frozen=True)
class RunConfig:
    """``executor``: where the shards run (default: a :class:`LocalExecutor` with ``threads`` and ``progress``);
    ``batch_size``: images per inference (a model's fixed batch dimension wins); ``provider``: onnxruntime's
    execution provider of every session (None: the CPU, as ``"cpu"``; ``"cuda"``, ``"tensorrt"``, or a full name
    such as ``"CUDAExecutionProvider"``), checked against the installed onnxruntime when the config is made
    (ProviderError). With an ``executor``, the provider is the executor's (a different one is an error)."""

    executor: Executor | None = None
    batch_size: int = 1
    threads: int = 0
    progress: bool = True
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {self.batch_size}")
        providers = resolve_providers(self.provider)
        if self.executor is not None and self.provider is not None:
            own = tuple(getattr(self.executor, "providers", CPU_PROVIDERS))
            if own != providers:
                raise ProviderError(f"RunConfig(provider='{self.provider}') differs from its executor's providers "
                                    f"{', '.join(own)}: give the provider to the executor")

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
        return LocalExecutor(self.threads, progress=self.progress, provider=self.provider)

    def with_(self, **changes) -> "RunConfig":
        """Returns a copy with ``changes``."""
        return replace(self, **changes)
