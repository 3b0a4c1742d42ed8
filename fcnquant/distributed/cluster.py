"""Connecting to Ray: start a local instance or join a running cluster, and how many CPUs it has.

``address=None`` or ``"local"`` starts a local Ray instance on this machine (shut down again when the work is
done: only an instance this module started is ever shut down), listening on 127.0.0.1 only, without a dashboard; ``"auto"`` joins the cluster that ``ray start``
runs on this machine; ``"HOST:PORT"`` or ``"ray://HOST:10001"`` joins that cluster. An already connected driver
(``ray.is_initialized()``) is used as it is.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

from fcnquant.errors import FcnquantError

log = logging.getLogger(__name__)

LOCAL = "local"
#: the only address a local instance this module starts listens on
LOOPBACK = "127.0.0.1"
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
        with _own_sigterm_kept():
            _init(ray, address, local, num_cpus, kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray instance" if local else f"the Ray cluster at {address}"
        raise FcnquantError(f"cannot connect to {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if local:
        _check_loopback(ray)
    log.info("Ray %s: %s", "started locally" if local else f"joined {address}", describe_cluster(ray))
    try:
        yield ray
    finally:
        ray.shutdown()


def _init(ray, address: str | None, local: bool, num_cpus: int | None, kwargs: dict) -> None:
    """Starts the local instance (loopback only, no dashboard) or joins the cluster at ``address``."""
    if local:
        with _loopback_only(ray):
            ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK,
                     _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)
    else:
        ray.init(address=address, **kwargs)


@contextlib.contextmanager
def _own_sigterm_kept() -> Iterator[None]:
    """Keeps the SIGTERM handler the program chose (the command line's: SIGTERM ends a run as Ctrl-C does, with
    its cleanups) across ``ray.init``, which installs its own (``sys.exit``). Without one, Ray's stays."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if before not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _loopback_only(ray) -> Iterator[None]:
    """Makes the local instance that ``ray.init`` starts in this block take 127.0.0.1 as its node address.

    On Linux, Ray replaces a loopback ``_node_ip_address`` by the machine's network address (so that other nodes
    can join), and every service (GCS, raylet, workers, agents) then listens there. Ray's local-only mode (the
    default on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps the loopback address; it is read
    once at ``import ray``, so it is switched on here for this call only (a later driver joining a cluster must
    find its network address again).
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray layout: _check_loopback says whether it worked
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _check_loopback(ray) -> None:
    """Shuts the local instance down and raises FcnquantError unless it runs on the loopback address."""
    try:
        address = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - any failure to tell: refuse rather than run reachable from the network
        address = "an unknown address"
    if address != LOOPBACK:
        ray.shutdown()
        raise FcnquantError(f"the local Ray instance took the node address {address}, not {LOOPBACK}, so its "
                            f"services would be reachable from the network; this Ray version ({ray.__version__}) "
                            "does not keep a local instance on the loopback address: start one yourself in its "
                            "local-only mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head) and pass --ray "
                            "auto")


def cluster_cpus(ray) -> int:
    """Returns the number of CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def describe_cluster(ray) -> str:
    """Returns e.g. ``"2 node(s), 16 CPU(s)"`` for the connected cluster."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return f"{len(nodes)} node(s), {cluster_cpus(ray)} CPU(s)"
