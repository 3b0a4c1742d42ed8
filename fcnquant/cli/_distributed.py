"""The ``--ray [ADDRESS]``, ``--shards N``, ``--threads N`` and ``--provider NAME`` options, and the one place that
turns them into an executor."""
from __future__ import annotations

import argparse

from fcnquant.errors import FcnquantError


def add_ray_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Adds --ray [ADDRESS] and --shards N."""
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the images as shards on Ray (pip install ray): --ray alone starts a "
                        "local Ray instance for this run; --ray auto joins the cluster `ray start` runs on this "
                        "machine; --ray HOST:PORT (or ray://HOST:10001) joins that cluster. The data must be on "
                        "storage every node reads at the same path; results equal a single-process run exactly")
    p.add_argument("--shards", type=int, metavar="N",
                   help="number of shards with --ray (default: the cluster's CPU count)")


PROVIDER_HELP = ("onnxruntime execution provider of every session: cpu (default), cuda, tensorrt, openvino, directml, "
                 "rocm, coreml, ... or a full name such as CUDAExecutionProvider; the CPU stays the fallback for "
                 "nodes it cannot run. CUDA and TensorRT need the GPU build: pip install onnxruntime-gpu instead of "
                 "onnxruntime")


def add_provider_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Adds --provider NAME."""
    p.add_argument("--provider", metavar="NAME", help=PROVIDER_HELP)


def executor_from_args(args: argparse.Namespace, *, progress: bool = True):
    """Returns the executor the command runs on: a ``RayExecutor`` with ``--ray``, else a ``LocalExecutor``.

    ``--threads`` (when the command has it) sets onnxruntime's intra-op threads, ``--provider`` its execution
    provider, checked here against the installed onnxruntime (ProviderError). Use it as a context manager: a
    Ray connection lasts for the whole command and is closed (a local Ray instance stopped) at its end.
    """
    ray = getattr(args, "ray", None)
    shards = getattr(args, "shards", None)
    threads = getattr(args, "threads", 0) or 0
    provider = getattr(args, "provider", None)
    if shards is not None and ray is None:
        raise FcnquantError("--shards sets the number of shards of a --ray run: add --ray")
    if shards is not None and shards < 1:
        raise FcnquantError(f"--shards must be at least 1, got {shards}")
    if threads < 0:
        raise FcnquantError(f"--threads must be 0 (onnxruntime decides) or more, got {threads}")
    if ray is None:
        from fcnquant.execute import LocalExecutor

        return LocalExecutor(threads, progress=progress, provider=provider)
    from fcnquant.distributed import RayExecutor

    return RayExecutor(ray, shards=shards, threads=threads, progress=progress, provider=provider)
