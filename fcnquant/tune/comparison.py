"""One compare pass of a candidate against the float model, for the isolated ranking and the reporting verdict.

``compare_models`` still takes its images and run as separate keywords (root, split, ids, preset, threads,
batch size) and runs in this process; this is the one place tune translates its configs into them, so the
ranking and the report follow compare's signature from here.
"""
from __future__ import annotations

from fcnquant.data.config import DataConfig
from fcnquant.execute import Executor, RunConfig


def compare_pair(float_model, quant_model, data: DataConfig, run: RunConfig | Executor | None = None, **options):
    """Returns ``compare_models(float_model, quant_model, ...)`` on the images of ``data`` (root, split, ids or
    num_images, preset and its overrides), with the executor's threads and ``run``'s batch size; ``options``:
    compare's own (``isolated``, ``histogram_layers``, ``drift_images``, ``progress``, ...)."""
    from fcnquant.compare import compare_models

    run = RunConfig.of(run)
    executor = run.resolved()
    options.setdefault("progress", executor.progress)
    return compare_models(
        float_model, quant_model, data=data.root, split=data.split, num_images=data.num_images,
        ids=list(data.ids) if data.ids is not None else None, preset=data.preset, size=data.size, mean=data.mean,
        std=data.std, ann_dir=data.ann_dir, batch_size=run.batch_size, threads=getattr(executor, "threads", 0),
        table=None, **options)
