"""Connecting to Ray: start a local instance or join a running cluster, and how many CPUs it has.

``address=None`` or ``"local"`` starts a local Ray instance on this machine (shut down again when the work is
done: only an instance this module started is ever shut down); ``"auto"`` joins the cluster that ``ray start``
runs on this machine; ``"HOST:PORT"`` or ``"ray://HOST:10001"`` joins that cluster. An already connected driver
(``ray.is_initialized()``) is used as it is.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from fcnquant.errors import FcnquantError

log = logging.getLogger(__name__)

LOCAL = "local"
# Ray starts its worker processes at niceness 15 (background priority). On a machine shared with other jobs
# that alone made the shards of a local instance ~2x slower than the single-process run they replace (which runs
# at niceness 0); a local instance exists for this run only, so its workers get the driver's priority. A joined
# cluster keeps its own setting (`RAY_worker_niceness=0 ray start ...` sets it there).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def import_ray():
    """Returns the ``ray`` module; FcnquantError with the install line when it is missing."""
    try:
        import ray
    except ImportError:
        raise FcnquantError('Ray is not installed: pip install "fcnquant[ray]" (or pip install ray)') from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = LOCAL, *, num_cpus: int | None = None) -> Iterator[object]:
    """Yields the ``ray`` module connected to ``address``; shuts Ray down on exit only if this call started it.

    ``num_cpus`` sizes a local instance (default: all of this machine's CPUs).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = address in (None, "", LOCAL)
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        if local:
            ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray instance" if local else f"the Ray cluster at {address}"
        raise FcnquantError(f"cannot connect to {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    log.info("Ray %s: %s", "started locally" if local else f"joined {address}", describe_cluster(ray))
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray) -> int:
    """Returns the number of CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def describe_cluster(ray) -> str:
    """Returns e.g. ``"2 node(s), 16 CPU(s)"`` for the connected cluster."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return f"{len(nodes)} node(s), {cluster_cpus(ray)} CPU(s)"
