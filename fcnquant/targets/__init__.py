"""fcnquant.targets: deployment targets as data (TOML files), the three built-ins, and the lookup by name or path.

File format and every key: docs/targets.md.
"""
from __future__ import annotations

from fcnquant.targets.load import (
    BUILTIN_NAMES,
    KEYS,
    TARGETS,
    TargetError,
    builtin_path,
    describe,
    get_target,
    load_target,
    parse_target,
    target_metadata,
    target_to_dict,
)
from fcnquant.targets.target import Target

__all__ = ["BUILTIN_NAMES", "KEYS", "TARGETS", "Target", "TargetError", "builtin_path", "describe", "get_target",
           "load_target", "parse_target", "target_metadata", "target_to_dict"]
