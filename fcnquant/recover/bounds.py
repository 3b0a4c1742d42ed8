"""Per-channel statistics of chosen Conv outputs over calibration images: one inference pass per image.

Used by high-bias absorption, which needs a lower bound of each producer's pre-activation. With BatchNorm folded
into the Convs there are no BN statistics (the paper's beta - 3 gamma), so they are measured: one onnxruntime
session exposes the producers' outputs, and a :class:`~fcnquant.recover.channel_stats.ChannelStats` per tensor
keeps the exact per-channel min and the mean / std.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from fcnquant.errors import DataError, ModelError
from fcnquant.recover.channel_stats import ChannelStats

log = logging.getLogger(__name__)


def choose_images(
    data: str | os.PathLike[str] | None,
    split: str | None = "train",
    num_images: int | None = 50,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    *,
    progress: bool = True,
):
    """Returns (dataset, image ids): ``ids`` if given, else ``num_images`` seeded ids of ``data``/``split``.

    ``data=None`` is the built-in synthetic VOC (its train split: disjoint from every val split).
    """
    from fcnquant.data import builtin_dataset, open_dataset, select_calibration_ids

    dataset = open_dataset(builtin_dataset(progress=progress) if data is None else data, split)
    if ids is None:
        return dataset, select_calibration_ids(dataset, num_images, seed=seed)
    chosen = [str(i) for i in ids]
    missing = [i for i in chosen if i not in set(dataset.ids)]
    if missing:
        raise DataError(f"{len(missing)} id(s) are not in dataset {dataset.describe()}: {', '.join(missing[:5])}")
    return dataset, chosen


def channel_stats(
    model,
    tensors: dict[str, int],
    dataset,
    ids: Sequence[str],
    *,
    preset=None,
    progress: bool = True,
) -> dict[str, ChannelStats]:
    """Returns {tensor: ChannelStats} of the float ``model`` (ModelProto) over images ``ids`` of ``dataset``.

    ``tensors`` maps each tensor to observe to its channel count. ``preset``: a preset name or Preset, or None
    for the model's own (metadata ``fcnquant.preset``); a fixed model input sets the size.
    """
    from tqdm import tqdm

    from fcnquant.data import iter_batches, preset_for_session
    from fcnquant.runtime import input_spec, make_session, with_outputs

    if not ids:
        raise DataError("no images to measure the pre-activation bounds on")
    names = list(tensors)
    session = make_session(with_outputs(model, names).SerializeToString())
    input_name, _ = input_spec(session)
    preset = preset_for_session(session, preset)
    stats = {n: ChannelStats.empty(c) for n, c in tensors.items()}
    bar = tqdm(total=len(ids), desc="pre-activation bounds", unit="img", disable=None if progress else True,
               leave=False)
    try:
        for batch in iter_batches(dataset, preset, ids, 1, with_masks=False):
            outs = session.run(names, {input_name: batch.images.astype("float32")})
            for name, x in zip(names, outs):
                try:
                    stats[name].update(x)
                except ValueError as exc:
                    raise ModelError(f"tensor '{name}' on image {batch.ids[0]}: {exc}") from None
            bar.update(len(batch.ids))
    finally:
        bar.close()
    log.info("measured per-channel bounds of %d tensor(s) on %d image(s)", len(names), len(ids))
    return stats
