"""The execution layer: the image loop, shards, progress, and the executors every pass runs on.

Layers below: ``errors``, ``_io``, ``observers``, ``metrics``, ``data``, ``runtime``, ``graph``. Passes
(``calibrate``, ``evaluate``, ``compare``, ``recover``, ``tune``) are written as shard functions run by an
:class:`Executor`; ``fcnquant.distributed`` adds the Ray executor on top of this layer.
"""
from __future__ import annotations

from fcnquant.execute.config import RunConfig
from fcnquant.execute.executor import Executor, LocalExecutor, ShardContext, TaskPool, is_session, merged
from fcnquant.execute.loop import ModelBatch, image_batches, model_batches, pad_batch, resolve_batch
from fcnquant.execute.progress import Progress
from fcnquant.execute.shards import Shard, ShardPlan, ShardResults, plan_shards, shard_dataset

__all__ = ["Executor", "LocalExecutor", "ModelBatch", "Progress", "RunConfig", "Shard", "ShardContext", "ShardPlan",
           "ShardResults", "TaskPool", "image_batches", "is_session", "merged", "model_batches", "pad_batch",
           "plan_shards", "resolve_batch", "shard_dataset"]
