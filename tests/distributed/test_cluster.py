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

from fcnquant.calibrate import build_table, collect_stats  # noqa: E402
from fcnquant.data import DataConfig, builtin_dataset, open_dataset  # noqa: E402
from fcnquant.demo_models import demo_model_path  # noqa: E402
from fcnquant.distributed import RayExecutor  # noqa: E402
from fcnquant.distributed.ray_backend import PROGRESS_ACTOR_PREFIX  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402
from fcnquant.execute import RunConfig  # noqa: E402

MODEL = str(demo_model_path("fcn8s"))
QUIET = RunConfig(progress=False)
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
    one = collect_stats(MODEL, DataConfig(train, ids=ids), QUIET)
    killer = Killer()
    killer.start()
    ex = RayExecutor(shards=4, progress=False)
    try:
        many = collect_stats(MODEL, DataConfig(train, ids=ids), ex)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no shard was seen running"
    shard, pid, done = killer.killed
    report = ex.reports[shard - 1]
    assert report.attempts == 2 and report.pid != pid  # rerun in a new worker process, merged once
    assert 1 <= done < report.images
    assert [r.images for r in ex.reports] == [16, 16, 16, 16]
    assert len({r.node for r in ex.reports}) == 2  # both nodes worked
    assert many.meta() == one.meta() and many.image_ids == ids
    for name in one.tensors:
        a, b = one.tensors[name].state(), many.tensors[name].state()
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
    ta, tb = build_table(one, "kl").to_dict(), build_table(many, "kl").to_dict()
    ta.pop("created"), tb.pop("created")
    assert ta == tb


def test_eval_with_a_killed_worker_equals_one_process(cluster):
    val = open_dataset(builtin_dataset(), "val")
    ids = val.ids[:64]
    one = evaluate(MODEL, DataConfig(val, ids=ids), QUIET)
    killer = Killer()
    killer.start()
    ex = RayExecutor(shards=4, progress=False)
    try:
        result = evaluate(MODEL, DataConfig(val, ids=ids), ex)
    finally:
        killer.stop.set()
        killer.join()
    np.testing.assert_array_equal(result.confusion, one.confusion)
    assert result.miou == one.miou and result.images == 64
    if killer.killed is not None:  # eval shards are short: the kill may land after the last image
        shard = killer.killed[0]
        assert ex.reports[shard - 1].attempts == 2


def test_compare_with_a_killed_worker_equals_one_process(cluster, demo_int8):
    from fcnquant.compare import CompareOptions, compare_models
    from fcnquant.execute import LocalExecutor

    quant = demo_int8.model
    data, options = DataConfig(num_images=64), CompareOptions(drift_images=8, gallery=4)
    one = compare_models(MODEL, quant, data, LocalExecutor(1, progress=False), options)  # the workers' threads
    killer = Killer()
    killer.start()
    try:
        with RayExecutor("auto", shards=4, threads=1, progress=False) as ex:
            many = compare_models(MODEL, quant, data, ex, options)
    finally:
        killer.stop.set()
        killer.join()
    a, b = one.to_dict(), many.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # final metrics, gallery and drift, bit for bit
    assert one.images == 64 and one.final.labelled
    assert killer.killed is not None, "no shard was seen running"


def test_calibrate_with_recovery_and_a_killed_worker_equals_one_process(cluster, tmp_path):
    import onnx

    from fcnquant.quantize import QuantConfig
    from fcnquant.recover.plan import resolve_plan
    from fcnquant.workflows import Outputs, calibrate

    # one onnxruntime thread on both sides: the workers' thread count (float kernels round by thread count)
    quant = QuantConfig(target="npu-pow2", per_channel=False)
    plan = resolve_plan("npu-pow2", per_channel=False, recover=True)
    assert plan.names() == ["equalize", "pow2-by-error", "bias-correction"]
    data = DataConfig(split="train", num_images=16)
    runs = {}
    for tag, run in (("one", RunConfig(threads=1, progress=False)), ("ray", RayExecutor(shards=4, threads=1,
                                                                                        progress=False))):
        killer = Killer() if tag == "ray" else None
        if killer:
            killer.start()
        try:
            runs[tag] = calibrate(MODEL, data, quant, run, plan, outputs=Outputs(model=tmp_path / f"{tag}.onnx"))
        finally:
            if killer:
                killer.stop.set()
                killer.join()
    one, many = (onnx.load(str(tmp_path / f"{t}.onnx")) for t in ("one", "ray"))
    assert one.graph == many.graph  # every initializer (corrected biases, scales) and node, bit for bit
    def timeless(d):
        return {k: timeless(v) for k, v in d.items() if k != "seconds"} if isinstance(d, dict) else d

    a, b = timeless(runs["one"].recovery), timeless(runs["ray"].recovery)
    assert a == b and a["bias_correction"]["layers"] > 0
    assert runs["one"].table.to_dict()["tensors"] == runs["ray"].table.to_dict()["tensors"]
