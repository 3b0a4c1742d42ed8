"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster): calibrate and eval on it equal
single-process runs, also with a worker process killed (SIGKILL) in the middle of its shard."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from fcnquant.calibrate.api import compute_table  # noqa: E402
from fcnquant.calibrate.collect import collect_stats  # noqa: E402
from fcnquant.data import builtin_dataset, open_dataset  # noqa: E402
from fcnquant.demo_models import demo_model_path  # noqa: E402
from fcnquant.distributed import collect as collect_on_ray  # noqa: E402
from fcnquant.distributed import evaluate as evaluate_on_ray  # noqa: E402
from fcnquant.distributed.ray_backend import PROGRESS_ACTOR_PREFIX  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402

MODEL = str(demo_model_path("fcn8s"))
STORE = 150 * 2**20


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False,
                                                          object_store_memory=STORE))
    c.add_node(num_cpus=1, object_store_memory=STORE)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


class Killer(threading.Thread):
    """Kills (SIGKILL) the worker process of the first shard seen in the middle of its images."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.killed: tuple[int, int, int] | None = None  # (shard, pid, images it had done)

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for name in ray.util.list_named_actors():
                if not name.startswith(PROGRESS_ACTOR_PREFIX):
                    continue
                try:
                    _, done, starts = ray.get(ray.get_actor(name).snapshot.remote())
                except Exception:
                    continue
                for shard, n in done.items():
                    if 1 <= n <= 2 and len(starts[shard]) == 1:  # mid-shard: 14+ of its 16 images still to do
                        pid = starts[shard][0][1]
                        os.kill(pid, signal.SIGKILL)
                        self.killed = (shard, pid, n)
                        return
            time.sleep(0.01)


def test_two_nodes(cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2


def test_calibrate_with_a_killed_worker_equals_one_process(cluster):
    train = open_dataset(builtin_dataset(), "train")
    ids = train.ids[:64]
    one = collect_stats(MODEL, train, ids, progress=False)
    killer = Killer()
    killer.start()
    try:
        run = collect_on_ray(MODEL, train, ids, shards=4, progress=False)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no shard was seen running"
    shard, pid, done = killer.killed
    report = run.shards[shard - 1]
    assert report.attempts == 2 and report.pid != pid  # rerun in a new worker process, merged once
    assert 1 <= done < report.images
    assert [r.images for r in run.shards] == [16, 16, 16, 16]
    assert len({r.node for r in run.shards}) == 2  # both nodes worked
    many = run.result
    assert many.meta() == one.meta() and many.image_ids == ids
    for name in one.tensors:
        a, b = one.tensors[name].state(), many.tensors[name].state()
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
    ta, tb = compute_table(one, "kl").to_dict(), compute_table(many, "kl").to_dict()
    ta.pop("created"), tb.pop("created")
    assert ta == tb


def test_eval_with_a_killed_worker_equals_one_process(cluster):
    val = open_dataset(builtin_dataset(), "val")
    ids = val.ids[:64]
    one = evaluate(MODEL, val, ids=ids, progress=False)
    killer = Killer()
    killer.start()
    try:
        run = evaluate_on_ray(MODEL, val, ids, shards=4, progress=False)
    finally:
        killer.stop.set()
        killer.join()
    np.testing.assert_array_equal(run.result.confusion, one.confusion)
    assert run.result.miou == one.miou and run.result.images == 64
    if killer.killed is not None:  # eval shards are short: the kill may land after the last image
        shard = killer.killed[0]
        assert run.shards[shard - 1].attempts == 2


def test_compare_with_a_killed_worker_equals_one_process(cluster, demo_int8):
    from fcnquant.compare import compare_models

    quant = demo_int8.model
    kw = dict(num_images=64, drift_images=8, gallery=4, progress=False, threads=1)  # the workers' thread count
    one = compare_models(MODEL, quant, **kw)
    killer = Killer()
    killer.start()
    try:
        many = compare_models(MODEL, quant, ray_address="auto", shards=4, **kw)
    finally:
        killer.stop.set()
        killer.join()
    a, b = one.to_dict(), many.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # final metrics, gallery and drift, bit for bit
    assert one.images == 64 and one.final.labelled
    assert killer.killed is not None, "no shard was seen running"
