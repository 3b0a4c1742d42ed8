"""The local Ray instance of the tests that run fcnquant.distributed in this process (two CPUs)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """Starts a local Ray instance for the requesting module and shuts it down after the module's last test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()
