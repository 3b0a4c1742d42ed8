"""The check of an equalized model: the largest output difference from the original, relative to the output's
range, on the first absorption images (a shard function run by an executor: the max merges exactly) or on random
inputs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fcnquant.data import DataConfig
from fcnquant.execute import Executor, ShardContext, image_batches
from fcnquant.runtime import CPU_PROVIDERS


def first_images_rel_diff(executor: Executor, original, equalized, dataset, ids: Sequence[str],
                          data: DataConfig) -> float:
    """Returns max over the images ``ids`` of max |out_eq - out| / max |out| (first output) of two ModelProtos."""
    parts = executor.map(rel_diff_shard, dataset, list(ids), args=(data,),
                         models={"original": original.SerializeToString(),
                                 "equalized": equalized.SerializeToString()}, desc="equalize: check")
    return max(parts, default=0.0)


def rel_diff_shard(ctx: ShardContext, data: DataConfig) -> float:
    """Returns max over the shard's images of max |out_eq - out| / max |out| of the models ``"original"`` and
    ``"equalized"`` (a shard function)."""
    from fcnquant.runtime import input_spec

    s0, s1 = ctx.session("original"), ctx.session("equalized")
    name, shape = input_spec(s0)
    preset = data.preset_for(s1)
    worst = 0.0
    for mb in image_batches(ctx.dataset, preset, ctx.ids, 1, None, with_masks=False):
        worst = max(worst, rel_diff(s0, s1, name, mb.images.astype(np.float32)))
        ctx.advance(mb.n)
    return worst


def rel_diff(s0, s1, name: str, x: np.ndarray) -> float:
    """Returns max |s1(x) - s0(x)| / max |s0(x)| of the first outputs of two sessions."""
    a = s0.run(None, {name: x})[0].astype(np.float64)
    b = s1.run(None, {name: x})[0].astype(np.float64)
    scale = float(np.abs(a).max()) or 1.0
    return float(np.abs(a - b).max()) / scale


def random_rel_diff(original, equalized, count: int = 2, providers: Sequence[str] = CPU_PROVIDERS) -> float:
    """Returns max over ``count`` standard-normal inputs (seed 0; dynamic dims: batch 1, 128 pixels) of
    max |out_eq - out| / max |out| of two ModelProtos (``providers``: onnxruntime's)."""
    from fcnquant.runtime import input_spec, make_session

    s0 = make_session(original.SerializeToString(), providers=providers)
    s1 = make_session(equalized.SerializeToString(), providers=providers)
    name, shape = input_spec(s0)
    rng = np.random.default_rng(0)
    dims = tuple(d if d is not None else (1 if i == 0 else 128) for i, d in enumerate(shape))
    worst = 0.0
    for x in [rng.standard_normal(dims).astype(np.float32) for _ in range(count)]:
        worst = max(worst, rel_diff(s0, s1, name, x))
    return worst
