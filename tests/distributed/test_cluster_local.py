"""The local Ray instance fcnquant starts itself (``--ray`` with no address): every socket its processes listen on
is a loopback one, there is no dashboard, and nothing of it is left running after the session."""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fcnquant._signals import raise_terminated, sigterm_raises  # noqa: E402
from fcnquant.distributed.cluster import ray_session  # noqa: E402

LISTEN = "0A"  # the TCP state column of /proc/net/tcp{,6}


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decodes /proc/net/tcp's address column: the IP's 32-bit words each in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening() -> dict[int, tuple[str, int]]:
    """Returns {socket inode: (address, port)} of every listening TCP socket of this machine."""
    out = {}
    for name in ("tcp", "tcp6"):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == LISTEN:
                hex_ip, hex_port = cols[1].split(":")
                out[int(cols[9])] = (str(_address(hex_ip)), int(hex_port, 16))
    return out


def _descendants(root: int) -> set[int]:
    """Returns the ids of ``root`` and of every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _sockets_of(pids: set[int]) -> dict[int, int]:
    """Returns {socket inode: pid} of the sockets the processes ``pids`` hold open."""
    out = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                out[int(target[8:-1])] = pid
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # [::ffff:127.0.0.1]
    return (mapped or ip).is_loopback


def test_the_decoder_reads_loopback_and_any():
    assert str(_address("0100007F")) == "127.0.0.1" and str(_address("00000000")) == "0.0.0.0"
    assert _is_loopback("::ffff:127.0.0.1") and not _is_loopback("0.0.0.0") and not _is_loopback("::")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_a_local_instance_listens_on_loopback_only():
    if ray.is_initialized():
        pytest.skip("a Ray driver is already connected in this process")
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an earlier driver may have left Ray's handler
    try:
        with sigterm_raises(), ray_session(None, num_cpus=1) as r:
            # ray.init installs its own SIGTERM handler (sys.exit); the command line's stays
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
            pids = _check_listeners(r)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not ray.is_initialized()
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and p != os.getpid()
                and (Path(f"/proc/{p}/stat").read_text().split(")")[1].split()[0] not in ("Z", "X"))]


def _check_listeners(r) -> set[int]:
    """Asserts that every listening socket of this process and the ones below it is a loopback one; returns
    their ids."""
    assert r.get(r.remote(lambda: socket.gethostname()).remote())  # a worker process is up
    assert r.util.get_node_ip_address() == "127.0.0.1"
    pids = _descendants(os.getpid())
    held = _sockets_of(pids)
    listening = {inode: where for inode, where in _listening().items() if inode in held}
    names = {held[i]: Path(f"/proc/{held[i]}/comm").read_text().strip() for i in listening}
    assert len(listening) >= 3, listening  # the GCS, the raylet, the workers: found, so the check means something
    exposed = sorted((addr, port, names[held[i]]) for i, (addr, port) in listening.items()
                     if not _is_loopback(addr))
    assert not exposed, exposed
    assert 8265 not in {port for _, port in listening.values()}  # no dashboard
    return pids


def test_a_ray_run_leaves_no_model_copy_in_tmpdir(synthetic_voc):
    """`calibrate --ray` on a local instance: the workers' model files go with their shards; only Ray's own
    session folder (its logs) and onnxruntime's telemetry file remain in $TMPDIR."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from fcnquant.demo_models import demo_model_path

    data = synthetic_voc(train=3, val=1, size=32, seed=6)
    tmp = Path(tempfile.mkdtemp(prefix="fq-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        res = subprocess.run([sys.executable, "-m", "fcnquant", "calibrate", str(demo_model_path("fcn8s")),
                              "--data", str(data), "--num-images", "3", "--no-progress", "--ray", "--shards", "2",
                              "--out-table", str(tmp / "t.json")], capture_output=True, text=True, timeout=300,
                             env=env)
        assert res.returncode == 0, res.stderr
        assert {p.name for p in tmp.iterdir()} - {".ses"} <= {"ray", "t.json"}
        assert (tmp / "t.json").is_file()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
