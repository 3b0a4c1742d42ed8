"""The images of high-bias absorption and the per-channel statistics of chosen Conv outputs over them.

High-bias absorption needs a lower bound of each producer's pre-activation. With BatchNorm folded into the Convs
there are no BN statistics (the paper's beta - 3 gamma), so they are measured: one onnxruntime session exposes
the producers' outputs, and a :class:`~fcnquant.recover.equalize.channel_stats.ChannelStats` per tensor keeps the
exact per-channel min and the mean / std. The pass is a shard function (:func:`bounds_shard`) run by an
executor; the shards' statistics merge bit for bit.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence


from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import DataError, ModelError
from fcnquant.execute import Executor, ShardContext, image_batches, resolve_batch
from fcnquant.recover.equalize.channel_stats import ChannelStats

log = logging.getLogger(__name__)

#: the images absorption measures by default: 50 of the default dataset's train split (disjoint from every val
#: split); the dataset is found as for every command (:func:`fcnquant.data.resolve_data`)
DEFAULT_DATA = DataConfig(split="train", num_images=50)


def absorb_data(data: DataConfig | Dataset | str | os.PathLike[str] | None) -> DataConfig:
    """Returns ``data`` as a DataConfig (a root alone: its train split, 50 images; None: :data:`DEFAULT_DATA`)."""
    if data is None:
        return DEFAULT_DATA
    return DataConfig.of(data, split=DEFAULT_DATA.split, num_images=DEFAULT_DATA.num_images)


def choose_images(data: DataConfig, model=None, *, progress: bool = True) -> tuple[Dataset, list[str]]:
    """Returns (dataset, image ids) of ``data``: its ``ids`` if given, else ``num_images`` seeded ids.

    A ``root`` of None is the default dataset for ``model`` (ONNX path or bytes;
    :func:`fcnquant.data.resolve_data`: the built-in synthetic VOC for a shipped demo model, else $FCNQUANT_DATA,
    ./data/VOCdevkit, ./VOCdevkit, else the synthetic set with a warning), as on every other command.
    """
    dataset = data.open(model, progress=progress)
    return dataset, data.choose(dataset, progress=progress)


def channel_stats(executor: Executor, model, tensors: dict[str, int], dataset, ids: Sequence[str],
                  data: DataConfig) -> dict[str, ChannelStats]:
    """Returns {tensor: ChannelStats} of the float ``model`` (ModelProto) over images ``ids`` of ``dataset``.

    ``tensors`` maps each tensor to observe to its channel count. ``data``: the preprocessing (its preset, else
    the model's own metadata ``fcnquant.preset``; a fixed model input sets the size).
    """
    from fcnquant.runtime import with_outputs

    if not ids:
        raise DataError("no images to measure the pre-activation bounds on")
    raw = with_outputs(model, list(tensors)).SerializeToString()
    parts = executor.map(bounds_shard, dataset, list(ids), args=(data, dict(tensors)), models={"model": raw},
                         desc="pre-activation bounds")
    stats = parts[0]
    for part in parts[1:]:
        stats = {name: s.merge(part[name]) for name, s in stats.items()}
    log.info("measured per-channel bounds of %d tensor(s) on %d image(s)", len(tensors), len(ids))
    return stats


def bounds_shard(ctx: ShardContext, data: DataConfig, tensors: dict[str, int]) -> dict[str, ChannelStats]:
    """Returns {tensor: ChannelStats} of the model ``"model"``'s ``tensors`` over the shard's images (a shard
    function)."""
    from fcnquant.runtime import input_spec

    session = ctx.session("model")
    names = list(tensors)
    input_name, shape = input_spec(session)
    preset = data.preset_for(session)
    stats = {n: ChannelStats.empty(c, record=ctx.start > 0) for n, c in tensors.items()}
    batch, fixed = resolve_batch(1, shape[0])
    for mb in image_batches(ctx.dataset, preset, ctx.ids, batch, fixed, with_masks=False):
        outs = session.run(names, {input_name: mb.feed.astype("float32")})
        for name, x in zip(names, outs):
            try:
                stats[name].update(x[:mb.n])
            except ValueError as exc:
                raise ModelError(f"tensor '{name}' on image {mb.ids[0]}: {exc}") from None
        ctx.advance(mb.n)
    return stats
