"""Small file helpers shared by every artifact writer: atomic writes, hashing, safe ONNX loading."""
from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from fcnquant._signals import deferred
from fcnquant.errors import FcnquantError, ModelError


#: inside :func:`all_or_nothing`: the (temporary, target) pairs waiting to be renamed together
_PENDING: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "fcnquant_pending_writes", default=None)

PathLike = str | os.PathLike[str]


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] = {}) -> None:
    """Raises FcnquantError, before any work, when an output cannot be written or would clobber another file.

    ``outputs`` and ``inputs`` map a name for messages (e.g. ``"--out-table"``, ``"MODEL"``) to a path or None
    (not given). An output may not be a folder, needs an existing writable folder, and may not resolve (symlinks
    and relative paths followed, hard links compared by inode) to an input or to another output.
    """
    seen: dict[Path, str] = {}
    ins = {name: Path(p) for name, p in inputs.items() if p is not None}
    for name, path in outputs.items():
        if path is None:
            continue
        target = Path(path)
        parent = target.parent if str(target.parent) else Path(".")
        if target.is_dir():
            raise FcnquantError(f"{name} {target} is a folder, not a file")
        if not parent.is_dir():
            raise FcnquantError(f"{name} {target}: output folder does not exist: {parent}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FcnquantError(f"{name} {target}: cannot write to {parent}")
        for in_name, src in ins.items():
            if _same_file(target, src):
                raise FcnquantError(f"{name} {target} would overwrite the input {in_name} {src}")
        resolved = target.resolve()
        for other_path, other in seen.items():
            if resolved == other_path or _same_file(resolved, other_path):
                raise FcnquantError(f"{name} and {other} name the same file {target}")
        seen[resolved] = name


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same file: equal resolved paths, or the same existing inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Writes every artifact of the block or none: :func:`atomic_path` inside it renames nothing until the block
    ends; then all temporaries are renamed onto their targets, and on any error all are removed instead.

    A nested block joins the outer one. Ctrl-C or SIGTERM during the renames waits until all are done, so an
    interrupt never leaves a part of the set in place.
    """
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
        with deferred():
            while pending:
                tmp, target = pending[0]
                _replace(tmp, target)
                pending.pop(0)
    finally:
        _PENDING.reset(token)
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _replace(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        _raise_if_full(exc, target)
        raise


def _raise_if_full(exc: OSError, target: Path) -> None:
    """Raises FcnquantError (one line for the user) when ``exc`` says the disk or the quota is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise FcnquantError(f"no space left on the device writing {target}") from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Nothing is left behind when the body raises, and an existing ``path`` is untouched until the rename. Inside
    :func:`all_or_nothing` the rename waits for the end of that block. A full disk raises FcnquantError.
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
    pending = _PENDING.get()
    try:
        yield tmp_path
        if pending is not None:
            pending.append((tmp_path, target))
        else:
            _replace(tmp_path, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        _raise_if_full(exc, target)
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def new_folder(path: PathLike) -> Iterator[Path]:
    """Creates the folder ``path`` and its missing parents, and yields it; when the block raises (Ctrl-C and
    SIGTERM included), the folders it created are removed again if they are still empty.

    FcnquantError when the folder cannot be created.
    """
    target = Path(path)
    created = []
    probe = target.absolute()
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FcnquantError(f"cannot create the folder {target}: {exc.strerror or exc}") from exc
    try:
        yield target
    except BaseException:
        for folder in created:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
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


def model_identity(model) -> str:
    """Returns the model's identity: the sha256 of its graph and weights, however the weights are stored.

    ``model``: a model file, or an ``onnx.ModelProto`` whose tensors hold their data.

    It is the sha256 of the model's protobuf serialization with every tensor's data inline (no external-data
    references, no ``data_location`` marks). For a model file saved inline that is the sha256 of the file's bytes
    (what fcnquant recorded before weights in external data files counted); a model whose weights live in a
    ``.data`` file has the digest of the same model saved inline, and changes when those weights change.
    """
    if hasattr(model, "graph"):
        if any(t.HasField("data_location") or len(t.external_data) for t in _tensors(model.graph)):
            import onnx

            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            for t in _tensors(copy.graph):
                t.ClearField("data_location")
                del t.external_data[:]
            model = copy
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    return model_digests(model)[0]


def model_digests(model: str | os.PathLike[str], raw: bytes | None = None, proto=None) -> tuple[str, ...]:
    """Returns the digests that identify the model file ``model``: its :func:`model_identity` first, then, for an
    inline file whose bytes differ from that serialization (tensors marked ``data_location: DEFAULT``), the sha256
    of the file's bytes, which tables and statistics made before recorded: both are accepted as this model.

    ``raw``: the file's bytes (or a buffer of them) when the caller has read them already; ``proto``: the ModelProto parsed from ``raw``
    when the caller has it (not changed; it saves parsing the file again). ModelError when the file or its
    external data cannot be read.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(model)
    try:
        raw = path.read_bytes() if raw is None else raw
        if proto is None or _marked(proto):  # the marks are cleared below: on a copy of the caller's model
            proto = onnx.load_from_string(bytes(raw))  # bytes: onnx refuses a memoryview
    except Exception as exc:  # a missing file, DecodeError, protobuf errors
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    file_digest = hashlib.sha256(raw).hexdigest()
    tensors = list(_tensors(proto.graph))
    if not _marked(proto):
        return (file_digest,)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)
    if external:
        try:
            load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # a missing or short .data file
            raise ModelError(f"cannot read the external weights of {path}: {exc}") from exc
    for t in tensors:
        t.ClearField("data_location")
        del t.external_data[:]
    digest = hashlib.sha256(proto.SerializeToString()).hexdigest()
    return (digest,) if external or digest == file_digest else (digest, file_digest)


def _marked(proto) -> bool:
    """Whether any tensor of the model carries an external-data reference or a ``data_location`` mark."""
    return any(t.HasField("data_location") or len(t.external_data) for t in _tensors(proto.graph))


def _tensors(graph) -> Iterator:
    """Yields every TensorProto of ``graph``: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


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
