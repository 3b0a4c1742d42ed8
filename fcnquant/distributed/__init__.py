"""Running calibration and evaluation as shards on a Ray cluster, with exact merges.

``ray`` is an optional extra (``pip install "fcnquant[ray]"``); importing this package does not import it.
:mod:`~fcnquant.distributed.shards` (splitting and merging, numpy only), :mod:`~fcnquant.distributed.cluster`
(connecting), :mod:`~fcnquant.distributed.ray_backend` (tasks, progress, driver loop),
:mod:`~fcnquant.distributed.remote_distances` (one task per candidate model, the tuner's ranking),
:mod:`~fcnquant.distributed.api` (collect, evaluate, compare's passes).
"""
from __future__ import annotations

from fcnquant.distributed.api import ComparePasses, Distributed, collect, compare_passes, evaluate, image_confusions
from fcnquant.distributed.cluster import ray_session
from fcnquant.distributed.remote_distances import RemoteDistances
from fcnquant.distributed.shards import ShardPlan, plan_shards

__all__ = ["ComparePasses", "Distributed", "RemoteDistances", "ShardPlan", "collect", "compare_passes", "evaluate",
           "image_confusions", "plan_shards", "ray_session"]
