"""Running passes as shards on a Ray cluster, with exact merges: :class:`RayExecutor`.

``ray`` is an optional extra (``pip install "ray>=2.9"``); importing this package does not import it.
:mod:`~fcnquant.distributed.cluster` (connecting), :mod:`~fcnquant.distributed.ray_backend` (the generic shard
task, progress, driver loop), :mod:`~fcnquant.distributed.executor` (the executor the passes are given).
This package sits above the execution layer and below nothing: no pass imports it, it imports no pass.
"""
from __future__ import annotations

from fcnquant.distributed.cluster import ray_session
from fcnquant.distributed.executor import RayExecutor

__all__ = ["RayExecutor", "ray_session"]
