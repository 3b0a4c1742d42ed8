"""Reading PyTorch checkpoints and loading them into zoo models with strict, explained key matching.

Accepted layouts (all read with ``torch.load(weights_only=True)``, so no code in the file runs):

- a plain state dict ``{key: tensor}``;
- mmsegmentation/mmcv ``{'state_dict': {...}, 'meta': {...}, ...}``;
- ``{'model': {...}}`` (common in training scripts);
- keys prefixed with ``module.`` (saved from ``DataParallel``/``DistributedDataParallel``).

Loading is strict: every key of the model must be present with the same shape and every checkpoint key must be
used, except keys under the model's ``dropped_key_prefixes`` (training-only auxiliary heads), which are dropped
with a log message. ``num_batches_tracked`` buffers may be absent (they do not affect inference). Otherwise a
``ModelError`` names the offending keys.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from fcnquant.errors import ModelError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model")
_MAX_LISTED = 8
# numpy arrays/scalars in checkpoint metadata (mmengine's message_hub, seeds): plain data, safe to rebuild
_NUMPY_GLOBALS = re.compile(
    r"numpy\.(_core|core)\.multiarray\.(_reconstruct|scalar)|numpy\.(ndarray|dtype)|numpy\.dtypes\.\w+DType"
)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Returns the tensors of a checkpoint file as a flat state dict with ``module.`` prefixes removed."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe content, RuntimeError/EOFError for broken files
        obj = _load_with_numpy(p, exc)
    return extract_state_dict(obj, source=str(p))


def _load_with_numpy(path: Path, first_error: Exception) -> object:
    """Retries a weights-only load allowing numpy arrays and scalars, the only non-torch globals accepted."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = []
    refused = [n for n in names if not _NUMPY_GLOBALS.fullmatch(n)]
    if not names or refused:
        detail = f"it references {', '.join(refused)}" if refused else str(first_error).splitlines()[0]
        raise ModelError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): {detail}. "
            "Re-save only its state dict (torch.save(model.state_dict(), path)) from a trusted environment."
        ) from first_error
    allowed = []
    for name in names:
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), attr))
    import numpy as np

    # dtype classes are only discovered while unpickling, so allow all of numpy's (plain descriptors)
    allowed += [t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint {path} (torch.load with weights_only=True): {exc}") from exc


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Returns the flat state dict inside a loaded checkpoint object (see the module docstring for layouts)."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
            obj = inner
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelError(f"{source}: state-dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{source}: value of '{key}' is a {type(value).__name__}, not a tensor")
        state[key] = value
    if not state:
        raise ModelError(f"{source}: the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def adapt_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns ``state`` with the model family's renames applied and its training-only keys dropped."""
    renames = getattr(model, "renamed_key_prefixes", ())
    dropped_prefixes = getattr(model, "dropped_key_prefixes", ())
    own = model.state_dict().keys()
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key not in own:
            for old, new in renames:
                if key.startswith(old) and new + key[len(old):] in own:
                    key = new + key[len(old):]
                    break
        if key.startswith(tuple(dropped_prefixes)):
            dropped.append(key)
            continue
        out[key] = value
    if dropped:
        log.info("dropped %d training-only checkpoint keys (%s)", len(dropped), _listed(dropped))
    return out


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Loads ``state`` into ``model`` after checking keys and shapes; raises ModelError naming any mismatch."""
    state = adapt_state_dict(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if wrong:
        shown = [f"'{k}' (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in wrong]
        more = len(wrong) - _MAX_LISTED
        problems.append("wrong shape for " + ", ".join(shown[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else ""))
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if problems:
        raise ModelError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    _check_aliases(model, state, source)
    full = dict(state)
    for k in own:
        if k not in full:  # only num_batches_tracked can get here
            full[k] = torch.zeros_like(own[k])
    model.load_state_dict(full, strict=True)


def _check_aliases(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Keys naming the same tensor in the model (awesome's pool3/4/5 views) must carry equal values."""
    by_tensor: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        first = by_tensor.setdefault(id(tensor), key)
        if first != key and not torch.equal(state[first].to(state[key].dtype), state[key]):
            raise ModelError(
                f"{source}: '{key}' and '{first}' are the same weight in {type(model).__name__} "
                "but hold different values in the checkpoint"
            )


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> nn.Module:
    """Returns ``model`` with the checkpoint's weights loaded strictly (a file path or an in-memory state dict)."""
    if isinstance(checkpoint, Mapping):
        state = extract_state_dict(checkpoint)
        source = "checkpoint"
    else:
        state = read_state_dict(checkpoint)
        source = f"checkpoint {checkpoint}"
    load_state_dict_strict(model, state, source)
    return model
