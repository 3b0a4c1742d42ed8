"""Reading and validating target files (TOML), the built-in targets, and the lookup by name or path."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable

from fcnquant.errors import CalibrationError
from fcnquant.targets.target import ADD_CONCAT, DTYPES, FALLBACKS, GRANULARITIES, ROUNDINGS, Target

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

#: the built-in targets, each a TOML file in this package
BUILTIN_NAMES = ("ort-cpu", "tensorrt", "npu-pow2")
_HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class TargetError(CalibrationError):
    """A target name is unknown, or a target file is unreadable or invalid."""


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}, got {v!r}")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}, got {v!r}")
        return v
    return check


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise ValueError(f"must be a name of letters, digits, '.', '_', '+' or '-', got {v!r}")
    return v


def _string_list(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise ValueError(f"must be a list of strings, got {v!r}")
        out = tuple(item(x) for x in v)
        dup = sorted({x for x in out if out.count(x) > 1})
        if dup:
            raise ValueError(f"lists {', '.join(dup)} twice")
        return out
    return check


def _op_type(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must list ONNX op types as strings, got {v!r}")
    import onnx.defs

    if not onnx.defs.has(v):
        raise ValueError(f"{v!r} is not an ONNX op type (they are spelled like Conv, MaxPool, Resize)")
    return v


#: every key of a target file: (parser, required)
KEYS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "name": (_name, True),
    "description": (_text, False),
    "activation_dtype": (_choice(DTYPES), True),
    "symmetric": (_bool, True),
    "pow2": (_bool, True),
    "weight_dtype": (_choice(DTYPES), True),
    "weight_symmetric": (_bool, True),
    "weight_granularity": (_choice(GRANULARITIES), True),
    "rounding": (_choice(ROUNDINGS), True),
    "accumulator_bits": (_int_in(16, 64), True),
    "integer_ops": (_string_list(_op_type), True),
    "add_concat": (_choice(ADD_CONCAT), True),
    "max_shift": (_int_in(0, 31), False),
    "fallbacks": (_string_list(_choice(FALLBACKS)), True),
    "tensorrt_cache": (_bool, False),
}


def parse_target(doc: dict[str, Any], source: str, sha256: str = "") -> Target:
    """Returns the Target described by the parsed TOML ``doc``; TargetError names ``source`` and the bad key."""
    unknown = [k for k in doc if k not in KEYS]
    if unknown:
        raise TargetError(f"{source}: unknown key '{unknown[0]}' (the keys are {', '.join(KEYS)})")
    values: dict[str, Any] = {}
    for key, (check, required) in KEYS.items():
        if key not in doc:
            if required:
                raise TargetError(f"{source}: missing key '{key}'")
            continue
        try:
            values[key] = check(doc[key])
        except ValueError as exc:
            raise TargetError(f"{source}: key '{key}' {exc}") from None
    _check_combinations(values, source)
    return Target(**values, source=source, sha256=sha256)


def _check_combinations(v: dict[str, Any], source: str) -> None:
    """Raises TargetError for keys that are valid alone but contradict each other."""
    if v["symmetric"] and v["activation_dtype"] == "uint8":
        raise TargetError(f"{source}: key 'symmetric' must be false for activation_dtype 'uint8' (a zero point of 0 "
                          "leaves no negative values)")
    if v["pow2"] and not v["symmetric"]:
        raise TargetError(f"{source}: key 'pow2' needs symmetric = true (power-of-two scales are for zero point 0)")
    if v["weight_symmetric"] and v["weight_dtype"] == "uint8":
        raise TargetError(f"{source}: key 'weight_symmetric' must be false for weight_dtype 'uint8'")
    if v["add_concat"] == "shift" and "max_shift" not in v:
        raise TargetError(f"{source}: missing key 'max_shift' (add_concat = 'shift' needs the largest shift in bits)")


def load_target(path: str | Path, source: str | None = None) -> Target:
    """Returns the Target in the TOML file ``path``; TargetError (one line naming the file and key) if bad."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TargetError(f"target file not found: {p}") from None
    except OSError as exc:
        raise TargetError(f"target file {p} is not readable: {exc.strerror or exc}") from None
    label = source or str(p)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TargetError(f"{label}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{label}: not valid TOML: {exc}") from None
    return parse_target(doc, label, hashlib.sha256(data).hexdigest())


def _builtin(name: str) -> Target:
    t = load_target(_HERE / f"{name}.toml", source=f"builtin:{name}")
    if t.name != name:
        raise TargetError(f"builtin:{name}: its name key says {t.name!r}")
    return t


TARGETS: dict[str, Target] = {name: _builtin(name) for name in BUILTIN_NAMES}


def builtin_path(name: str) -> Path:
    """Returns the package file of the built-in target ``name``."""
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return _HERE / f"{name}.toml"


def get_target(target: str | Path | Target) -> Target:
    """Returns the Target for a built-in name, the path of a target file, or the Target itself.

    A string that names a built-in is that built-in (even if a file of that name exists); anything else is read
    as a file. Raises TargetError for an unknown name or a bad file.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    p = Path(target)
    if isinstance(target, Path) or p.suffix.lower() == ".toml" or p.exists():
        return load_target(p)
    raise TargetError(f"unknown target {str(target)!r}; choose from {', '.join(TARGETS)} or give a target file "
                      "(.toml)")


def describe(target: Target) -> str:
    """Returns how a target is named to the user: its name, and for a file its path."""
    return target.name if target.builtin else f"{target.name} ({target.source})"


def target_metadata(target: Target) -> dict[str, str]:
    """Returns the model metadata entries that record where ``target`` came from."""
    return {"fcnquant.target_source": target.source, "fcnquant.target_sha256": target.sha256}


def target_to_dict(target: Target) -> dict[str, Any]:
    """Returns the target as the keys of its file (what a table stores to load the same target back)."""
    d: dict[str, Any] = {key: getattr(target, key) for key in KEYS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
