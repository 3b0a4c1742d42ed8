"""Scoring many candidate models on the same few images, one Ray task per candidate (the tuner's ranking).

:class:`RemoteDistances` puts the images and the float model's logits in the object store once; ``submit`` sends
a candidate's bytes with a task that runs it and returns :func:`fcnquant.tune.ranking.prediction_distance` (the
same function the local ranking calls, so the numbers are the same). The driver builds the next candidate while the
cluster runs the previous ones; at most ``limit`` candidates are in flight (their bytes are held in the object
store until their task is done). On an error or Ctrl-C every unfinished task is cancelled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnquant.distributed.cluster import LOCAL, cluster_cpus, ray_session


class RemoteDistances:
    """A context manager: ``submit(key, model_path)`` per candidate, then ``results()`` -> {key: (changed, sq)}."""

    def __init__(self, images: Sequence[np.ndarray], logits: Sequence[np.ndarray], *, address: str | None = LOCAL,
                 threads: int = 0, limit: int | None = None) -> None:
        self._session = ray_session(address)
        self._images, self._logits = list(images), list(logits)
        self.threads = threads
        self.limit = limit
        self._pending: dict = {}
        self._done: dict[str, tuple[int, float]] = {}

    def __enter__(self) -> "RemoteDistances":
        self._ray = self._session.__enter__()
        self._images_ref = self._ray.put(self._images)
        self._logits_ref = self._ray.put(self._logits)
        if self.limit is None:
            self.limit = 2 * cluster_cpus(self._ray)
        return self

    def __exit__(self, *exc) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        self._session.__exit__(*exc)

    def submit(self, key: str, model: str | os.PathLike[str]) -> None:
        """Sends the candidate ``model`` (read now: the file may be overwritten or removed afterwards)."""
        from fcnquant.distributed import ray_backend as rb

        while len(self._pending) >= self.limit:
            self._collect(1)
        ref = rb.distance_task.remote(Path(model).read_bytes(), self._images_ref, self._logits_ref, self.threads)
        self._pending[ref] = key

    def results(self) -> dict[str, tuple[int, float]]:
        """Waits for every submitted candidate; returns {key: (changed pixels, summed squared logit error)}."""
        while self._pending:
            self._collect(len(self._pending))
        return dict(self._done)

    def _collect(self, n: int) -> None:
        from fcnquant.distributed.ray_backend import get_result

        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        for ref in ready[:n]:
            key = self._pending.pop(ref)
            self._done[key] = get_result(ref)
