"""What decides the int8 model besides the scales: target, weight granularity, what stays in float."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping


def _strings(values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(str(v) for v in values)


def _builtin_names() -> tuple[str, ...]:
    from fcnquant.targets import BUILTIN_NAMES

    return BUILTIN_NAMES


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: the scale ``method`` (with its ``params``, e.g. ``{"percentile": 99.9}``), the deployment
    ``target`` (a built-in name: ``ort-cpu``, ``tensorrt``, ``npu-pow2``; a target file's path, read here once;
    or a ``fcnquant.targets.Target``), ``per_channel`` weights, ``quantize_output`` (the final
    logits too), nodes kept in float (``exclude_nodes``: exact names, ``exclude_ops``: op types,
    ``exclude_regex``: patterns matched against whole node names), ``pow2_rounding`` (``"up"`` or ``"error"``:
    how a power-of-two weight scale is picked) and ``int16_tensors``: activations quantized to symmetric int16
    instead of the target's 8-bit type (``fcnquant.calibrate.qparams.qparams_bits``; the model's opset becomes
    21, the first whose QuantizeLinear/DequantizeLinear take int16)."""

    method: str = "kl"
    target: Any = "ort-cpu"  # a built-in name or a fcnquant.targets.Target
    params: tuple[tuple[str, Any], ...] = ()
    per_channel: bool = True
    quantize_output: bool = False
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: tuple[str, ...] = ()
    pow2_rounding: str = "up"
    int16_tensors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", tuple(sorted(self.params.items())))
        object.__setattr__(self, "int16_tensors", tuple(sorted(set(_strings(self.int16_tensors)))))
        for name in ("exclude_nodes", "exclude_ops", "exclude_regex"):
            object.__setattr__(self, name, _strings(getattr(self, name)))
        if not isinstance(self.target, str) or self.target not in _builtin_names():
            from fcnquant.targets import get_target

            object.__setattr__(self, "target", get_target(self.target))  # a file is read once, here

    @property
    def method_params(self) -> dict[str, Any]:
        """The method's parameters as a dict."""
        return dict(self.params)

    @property
    def excludes(self) -> bool:
        """True when some node is kept in float."""
        return bool(self.exclude_nodes or self.exclude_ops or self.exclude_regex)

    def activation_bits(self, tensor: str) -> int:
        """Returns the width (8 or 16) activation ``tensor`` is quantized to."""
        return 16 if tensor in self.int16_tensors else 8

    def with_(self, **changes) -> "QuantConfig":
        """Returns a copy with ``changes``."""
        return replace(self, **changes)

    def check(self) -> None:
        """Raises on an unknown method, method parameter or target: before minutes of inference."""
        from fcnquant.calibrate.methods import resolve_params
        from fcnquant.targets import get_target

        resolve_params(self.method, **self.method_params)
        get_target(self.target)
