"""Which dataset to use when none is given: a real VOC found on the machine, else the built-in synthetic VOC.

Order, for a model that is not a shipped demo model (``fcnquant.demo_models.is_demo_model``):

1. the folder named by ``$FCNQUANT_DATA`` (an error if it is set but holds no VOC dataset);
2. ``data/VOCdevkit`` in the current folder (mmsegmentation's layout), then ``VOCdevkit``;
3. otherwise the built-in synthetic VOC, with a one-line warning that names it and how to pass real data.

The shipped demo models were trained on the built-in synthetic VOC, so for them (and the int8/fp16 models made
from them) it is used directly, without a search or a warning. Every command that reads a dataset (``calibrate``, ``tune``, ``equalize --absorb``,
``eval``, ``compare``, ``demo``) and their library functions call :func:`resolve_data`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fcnquant.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "FCNQUANT_DATA"
#: the built-in synthetic VOC (``fcnquant.data.synth``). 1000 train images: a ~0.9M-parameter FCN-8s-like net
#: overfits 300 (43.5 val mIoU) but reaches 57.6 with 1000 at the same compute. The val images do not depend on the
#: train count (image i depends on seed, split, i).
BUILTIN_PARAMS = {"train": 1000, "val": 100, "size": 192, "seed": 0}
#: folders searched (relative to the current folder) after $FCNQUANT_DATA
LOCAL_ROOTS = ("data/VOCdevkit", "VOCdevkit")


@dataclass(frozen=True)
class DataChoice:
    """The dataset root chosen by :func:`resolve_data` and why: ``origin`` is one of ``given``, ``demo`` (the
    built-in set for a shipped demo model), ``env`` ($FCNQUANT_DATA), ``local`` (found in the current folder) or
    ``builtin`` (nothing found: the synthetic set)."""

    root: Path
    origin: str

    @property
    def synthetic(self) -> bool:
        """Whether the choice is the built-in synthetic VOC."""
        return self.origin in ("demo", "builtin")

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"root": str(self.root), "origin": self.origin}


def find_local_voc(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """Returns the first of ``LOCAL_ROOTS`` under ``cwd`` (default: the current folder) that holds a VOC dataset."""
    from fcnquant.data.voc import find_voc_root

    base = Path.cwd() if cwd is None else Path(cwd)
    for rel in LOCAL_ROOTS:
        cand = base / rel
        if cand.is_dir() and find_voc_root(cand) is not None:
            return cand
    return None


def resolve_data(
    data: str | os.PathLike[str] | None = None,
    model=None,
    *,
    progress: bool = True,
    cwd: str | os.PathLike[str] | None = None,
) -> DataChoice:
    """Returns the DataChoice for ``data``: itself when given, else the search described in the module docstring.

    ``model`` (an ONNX path, bytes or onnxruntime session; None for "unknown") decides whether the model is a
    shipped demo model. Raises DataError when ``$FCNQUANT_DATA`` is set but is not a VOC dataset folder.
    """
    if data is not None:
        return DataChoice(Path(data), "given")
    import fcnquant.data

    builtin_dataset = fcnquant.data.builtin_dataset  # looked up at call time (tests stub it there)
    if model is not None and _is_demo(model):
        return DataChoice(builtin_dataset(progress=progress), "demo")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        from fcnquant.data.voc import find_voc_root

        if not Path(env).is_dir() or find_voc_root(env) is None:
            raise DataError(f"${ENV_VAR}={env} is not a VOC dataset folder (no JPEGImages/ in it, in VOC2012/ or "
                            "in VOCdevkit/VOC2012/)")
        log.info("no --data given: using the VOC dataset at %s ($%s)", env, ENV_VAR)
        return DataChoice(Path(env), "env")
    local = find_local_voc(cwd)
    if local is not None:
        log.info("no --data given: using the VOC dataset found at %s", local)
        return DataChoice(local, "local")
    root = builtin_dataset(progress=progress)
    log.warning("no --data given and no VOC dataset found ($%s unset, no ./%s or ./%s): using fcnquant's built-in "
                "SYNTHETIC VOC (%s), not real images; pass --data DIR (data= in Python) or set %s=DIR to use real "
                "data", ENV_VAR, LOCAL_ROOTS[0], LOCAL_ROOTS[1], root, ENV_VAR)
    return DataChoice(root, "builtin")


def _is_demo(model) -> bool:
    from fcnquant.demo_models import is_demo_model

    try:
        return is_demo_model(model)
    except Exception as exc:  # an unreadable model fails later, with the caller's own message
        log.debug("cannot tell whether %r is a demo model: %s", model, exc)
        return False
