"""Small file helpers shared by every artifact writer: atomic writes, hashing, safe ONNX loading."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from fcnquant.errors import FcnquantError, ModelError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Nothing is left behind when the body raises, and an existing ``path`` is untouched until the rename.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise FcnquantError(f"output folder does not exist: {parent}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise FcnquantError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the artifact the permissions a plain open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically (temp file + rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Returns the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_onnx(path: str | os.PathLike[str]):
    """Returns the ``onnx.ModelProto`` at ``path``, raising ModelError with a clear message if unusable."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError / various protobuf errors
        raise ModelError(f"{p} is not a readable ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"{p} is not a readable ONNX model: the graph has no nodes")
    return model


def as_model(model):
    """Returns ``model`` as an ``onnx.ModelProto``: loaded from a path, or as it is when it is one already."""
    if isinstance(model, (str, os.PathLike)):
        return load_onnx(Path(model))
    if not hasattr(model, "graph"):
        raise ModelError(f"expected a model path or an onnx.ModelProto, got {type(model).__name__}")
    return model
