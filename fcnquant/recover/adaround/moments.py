"""AdaRound's image pass: each layer's patch moments (``GramStats``) over the calibration images, as a shard
function run by an executor.

The float model (and the int8 model, unless the quantized inputs are the float ones) run once per image with
every layer's input tensor exposed. The shards' moments are added in shard order: one shard (the local default)
gives the result of a single pass bit for bit; several shards give it up to the rounding of float64 additions
(:meth:`~fcnquant.recover.adaround.conv_patches.GramStats.merge`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fcnquant.data import DataConfig
from fcnquant.execute import Executor, ShardContext, image_batches, resolve_batch
from fcnquant.recover.adaround.conv_patches import ConvSpec, GramStats
from fcnquant.recover.adaround.layers import Layer


def layer_moments(executor: Executor, dataset, ids: Sequence[str], data: DataConfig, model, qmodel,
                  layers: list[Layer], desc: str = "adaround inputs") -> list[GramStats]:
    """Returns each layer's patch moments over the images ``ids`` (``qmodel`` None: the quantized inputs are the
    float ones)."""
    from fcnquant.runtime import with_outputs

    f_names = list(dict.fromkeys(l.x_float for l in layers))
    models = {"float": with_outputs(model, _not_inputs(model, f_names)).SerializeToString()}
    if qmodel is not None:
        q_names = list(dict.fromkeys(l.x_quant for l in layers))
        models["quant"] = with_outputs(qmodel, _not_inputs(qmodel, q_names)).SerializeToString()
    specs = [(l.x_float, l.x_quant, l.spec) for l in layers]
    parts = executor.map(moments_shard, dataset, ids, args=(data, specs, qmodel is not None), models=models,
                         desc=desc)
    grams = parts[0]
    for part in parts[1:]:
        for gram, other in zip(grams, part):
            gram.merge(other)
    return grams


def moments_shard(ctx: ShardContext, data: DataConfig, specs: list[tuple[str, str, ConvSpec]],
                  quantized: bool) -> list[GramStats]:
    """Returns the patch moments of each layer ``(float input, int8 input, ConvSpec)`` of ``specs`` over the
    shard's images (a shard function; the models ``"float"`` and, when ``quantized``, ``"quant"``)."""
    from fcnquant.runtime import input_spec

    fsess = ctx.session("float")
    qsess = ctx.session("quant") if quantized else None
    f_names = list(dict.fromkeys(f for f, _, _ in specs))
    q_names = list(dict.fromkeys(q for _, q, _ in specs))
    in_name, shape = input_spec(fsess)
    preset = data.preset_for(fsess)
    batch, fixed = resolve_batch(1, shape[0])
    grams = [GramStats(spec, same_inputs=qsess is None) for _, _, spec in specs]
    for mb in image_batches(ctx.dataset, preset, ctx.ids, batch, fixed, with_masks=False):
        x = np.ascontiguousarray(mb.feed, np.float32)
        fo = _fetch(fsess, in_name, x, f_names)
        qo = _fetch(qsess, qsess.get_inputs()[0].name, x, q_names) if qsess is not None else fo
        if mb.n < len(x):  # a fixed batch padded with the last image: the real images only (one view per array)
            views: dict[int, np.ndarray] = {}
            fo, qo = ({k: views.setdefault(id(v), v[:mb.n]) for k, v in d.items()} for d in (fo, qo))
        for (x_float, x_quant, _), gram in zip(specs, grams):
            gram.update(fo[x_float], qo[x_quant])
        ctx.advance(mb.n)
    return grams


def _not_inputs(model, names: list[str]) -> list[str]:
    inputs = {i.name for i in model.graph.input}
    return [n for n in names if n not in inputs]


def _fetch(session, in_name: str, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    fetch = [n for n in names if n != in_name]
    out = dict(zip(fetch, session.run(fetch, {in_name: x}))) if fetch else {}
    if in_name in names:
        out[in_name] = x
    return out
