"""Whether a QDQ model runs as a target's integer arithmetic: every op that would not, and why.

Graph inspection only (no inference). A finding is one of:

* ``float`` / ``fp16``: an op of the target's ``integer_ops`` that computes an activation in float (or fp16): a
  data input (weights included) not read from a DequantizeLinear, or an output not written to a QuantizeLinear.
  A Relu or Clip that alone reads such an op's output is fused into it (checked as one unit); the op writing a
  graph output (the float logits) needs no QuantizeLinear after it. Allowed when the target lists the type in
  ``fallbacks`` (then listed under ``fallback_ops``, not as findings).
* ``pow2``: an activation or weight scale that is not a power of two on a ``pow2`` target.
* ``granularity``: per-channel weight scales on a per-tensor target (or per-tensor ones on a per-channel target).
* ``align``: Add/Concat input scales the target cannot align: unequal for ``add_concat = "shared"``, not a power
  of two apart or more than ``max_shift`` bits apart for ``"shift"``.
* ``int16``: int16 activations where the target's activation type is not int16 and ``fallbacks`` lacks it.
* ``dtype``: an activation or weight integer type other than the target's.
* ``zero-point``: a non-zero zero point on a symmetric target.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fcnquant.check.graph_view import FUSED_ACTIVATIONS, GraphView, view

#: exit status of `fcnquant check` for a model that is not legal on the target
EXIT_NOT_LEGAL = 1


@dataclass(frozen=True)
class Finding:
    """One op that would not run as the target's integer arithmetic."""

    node: str
    op: str
    kind: str  # float, fp16, pow2, granularity, align, int16, dtype, zero-point
    what: str
    why: str

    def format(self) -> str:
        return f"{self.node} ({self.op}): {self.what} - {self.why}"


@dataclass(frozen=True)
class CheckReport:
    """The verdict of :func:`check_model`: the findings, and the ops that ran on an allowed fallback."""

    model: str
    target: str
    target_source: str
    target_sha256: str
    findings: tuple[Finding, ...]
    fallback_ops: tuple[Finding, ...] = ()  # float/fp16 ops the target's fallbacks allow
    integer_ops: int = 0  # ops of the target's integer_ops that compute activations

    @property
    def legal(self) -> bool:
        return not self.findings

    @property
    def bad_nodes(self) -> list[str]:
        """The nodes with findings, each once, in the order found."""
        return list(dict.fromkeys(f.node for f in self.findings))

    def summary(self) -> str:
        """Returns a few words: 'legal', or how many ops are not integer, by kind."""
        if self.legal:
            return "legal"
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        n = len(self.bad_nodes)
        return f"{n} op{'s' if n != 1 else ''} not integer (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"

    def format_text(self) -> str:
        """Returns one line per finding (node, op, what, why) and the verdict line."""
        lines = [f.format() for f in self.findings]
        lines += [f"{f.format()} (allowed fallback)" for f in self.fallback_ops]
        lines.append(f"check ({self.target}): {self.summary()}; {self.integer_ops} ops of the target's integer ops "
                     "checked")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {
            "model": self.model, "target": self.target, "target_source": self.target_source,
            "target_sha256": self.target_sha256, "legal": self.legal, "integer_ops": self.integer_ops,
            "findings": [asdict(f) for f in self.findings], "fallback_ops": [asdict(f) for f in self.fallback_ops],
        }


def check_model(model, target) -> CheckReport:
    """Returns the CheckReport of ``model`` (a path or ModelProto) on ``target`` (a built-in name, a target file's
    path or a ``fcnquant.targets.Target``). Reads the graph only; raises ModelError for an unreadable model."""
    from fcnquant._io import as_model
    from fcnquant.targets import get_target

    t = get_target(target)
    label = str(model) if isinstance(model, (str, os.PathLike)) else "(in-memory model)"
    proto = as_model(model)
    g = view(proto)
    findings: list[Finding] = []
    fallbacks: list[Finding] = []
    counted = _check_compute(g, t, findings, fallbacks)
    _check_quantizers(g, t, findings)
    _check_alignment(g, t, findings)
    order = {g.name(n): i for i, n in enumerate(g.nodes)}
    findings.sort(key=lambda f: order.get(f.node, len(order)))
    return CheckReport(label, t.name, t.source, t.sha256, tuple(findings), tuple(fallbacks), counted)


def _check_compute(g: GraphView, t, findings: list, fallbacks: list) -> int:
    """Adds a float/fp16 finding for each integer op that computes in float; returns how many integer ops there are."""
    counted = 0
    for node in g.nodes:
        if node.op_type not in t.integer_ops or not any(x in g.activations for x in node.input if x):
            continue
        if _fused_into_previous(g, node, t):
            continue
        counted += 1
        why = _why_float(g, node)
        if why is None:
            continue
        data = g.data_inputs(node)
        kind = "fp16" if any(g.dtypes.get(x) == "fp16" for x in data) else "float"
        f = Finding(g.name(node), node.op_type, kind, f"computes in {kind}", why)
        if kind in t.fallbacks:
            fallbacks.append(f)
        else:
            findings.append(Finding(f.node, f.op, kind, f.what, f"{why}; target {t.name} has no {kind} fallback"))
    return counted


def _fused_into_previous(g: GraphView, node, t) -> bool:
    """Whether ``node`` (a Relu/Clip) is the only reader of an integer op's output: then it is part of that op."""
    if node.op_type not in FUSED_ACTIVATIONS:
        return False
    prev = g.made_by.get(node.input[0])
    return (prev is not None and prev.op_type in set(t.integer_ops) | set(FUSED_ACTIVATIONS)
            and len(g.users.get(node.input[0], [])) == 1 and node.input[0] not in g.outputs)


def _why_float(g: GraphView, node) -> str | None:
    """Returns why ``node`` (with its fused Relu/Clip) computes in float, or None when it runs between DQ and Q."""
    for x in g.data_inputs(node):
        src = g.made_by.get(x)
        if src is None or src.op_type != "DequantizeLinear":
            made = f"{src.op_type} {g.name(src)}" if src is not None else ("an initializer" if x in g.inits
                                                                         else "a graph input")
            return f"input '{x}' is float (from {made}, not from a DequantizeLinear)"
    tail = node
    while True:
        readers = g.users.get(tail.output[0], [])
        if len(readers) == 1 and readers[0].op_type in FUSED_ACTIVATIONS and tail.output[0] not in g.outputs:
            tail = readers[0]
            continue
        break
    out = tail.output[0]
    if out in g.outputs:
        return None  # the logits: float by design
    bad = [r for r in g.users.get(out, []) if r.op_type != "QuantizeLinear"]
    if bad:
        return f"output '{out}' is read in float by {bad[0].op_type} {g.name(bad[0])} (no QuantizeLinear)"
    return None


def _check_quantizers(g: GraphView, t, findings: list) -> None:
    """Adds the pow2, granularity, int16, dtype and zero-point findings of every quantizer (each scale once)."""
    seen: set[tuple[str, str]] = set()
    for node in g.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        x = node.input[0]
        weight = node.op_type == "DequantizeLinear" and x in g.inits
        if not weight and node.op_type == "DequantizeLinear" and g.made_by.get(x) is not None \
                and g.made_by[x].op_type == "QuantizeLinear":
            continue  # an activation's DQ: its Q was checked
        key = (x, node.input[1])
        if key in seen or node.input[1] not in g.inits:
            continue
        seen.add(key)
        scale = np.asarray(g.inits[node.input[1]], np.float64).ravel()
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = np.asarray(g.inits[zp_name]).ravel() if zp_name in g.inits else np.zeros(1)
        dtype = g.dtypes.get(zp_name, "uint8") if zp_name else ("int8" if weight else "uint8")
        if weight and dtype == "int32":
            continue  # a bias: the accumulator's type, scale = input x weight scale
        add = _adder(findings, g.name(node), node.op_type)
        role = f"weight '{x}'" if weight else f"activation '{x}'"
        if t.pow2:
            bad = [float(s) for s in scale if not (s > 0 and math.frexp(float(s))[0] == 0.5)]
            if bad:
                add("pow2", f"scale of {role}", f"{bad[0]:.6g} is not a power of two (target {t.name} requantizes "
                    "by shifts)")
        if weight:
            _check_weight(add, g, t, x, role, scale, zp, dtype)
        else:
            _check_activation(add, t, role, zp, dtype)


def _adder(findings: list, node: str, op: str):
    def add(kind: str, what: str, why: str) -> None:
        findings.append(Finding(node, op, kind, what, why))
    return add


def _check_weight(add, g: GraphView, t, name: str, role: str, scale, zp, dtype: str) -> None:
    channels = int(np.asarray(g.inits[name]).shape[0]) if np.asarray(g.inits[name]).ndim else 1
    if scale.size > 1 and not t.per_channel_weights:
        add("granularity", f"{role} has {scale.size} scales (per channel)",
            f"target {t.name} takes one weight scale per tensor")
    elif scale.size == 1 and channels > 1 and not t.per_tensor_weights:
        add("granularity", f"{role} has one scale (per tensor)", f"target {t.name} takes one weight scale per "
            "output channel")
    if dtype != t.weight_dtype:
        add("dtype", f"{role} is {dtype}", f"target {t.name} takes {t.weight_dtype} weights")
    if t.weight_symmetric and np.any(zp != 0):
        add("zero-point", f"{role} has zero point {int(zp[zp != 0][0])}", f"target {t.name} takes symmetric weights")


def _check_activation(add, t, role: str, zp, dtype: str) -> None:
    if dtype in ("int16", "uint16") and t.activation_dtype != "int16":
        if "int16" not in t.fallbacks:
            add("int16", f"{role} is {dtype}", f"target {t.name} does not allow int16 activations")
        return
    if dtype != t.activation_dtype:
        add("dtype", f"{role} is {dtype}", f"target {t.name} takes {t.activation_dtype} activations")
    elif t.symmetric and np.any(zp != 0):
        add("zero-point", f"{role} has zero point {int(zp[zp != 0][0])}",
            f"target {t.name} takes symmetric activations (zero point 0)")


def _input_scale(g: GraphView, x: str) -> float | None:
    dq = g.made_by.get(x)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in g.inits:
        return None
    s = np.asarray(g.inits[dq.input[1]]).ravel()
    return float(s[0]) if s.size == 1 else None


def _check_alignment(g: GraphView, t, findings: list) -> None:
    """Adds an align finding for each Add/Concat whose quantized inputs' scales the target cannot align."""
    if t.add_concat == "any":
        return
    for node in g.nodes:
        if node.op_type not in ("Add", "Concat") or not any(x in g.activations for x in node.input if x):
            continue
        scales = [s for s in (_input_scale(g, x) for x in g.data_inputs(node)) if s is not None]
        if len(scales) < 2:
            continue
        lo, hi = min(scales), max(scales)
        why = None
        if t.add_concat == "shared" and hi != lo:
            why = f"target {t.name} needs equal input scales (shared)"
        elif t.add_concat == "shift":
            bits = math.log2(hi / lo)
            if bits != round(bits):
                why = f"their ratio {hi / lo:.6g} is not a power of two (target {t.name} aligns by shifts)"
            elif bits > t.max_shift:
                why = f"they are {int(bits)} bits apart, more than max_shift {t.max_shift} of target {t.name}"
        if why:
            findings.append(Finding(g.name(node), node.op_type, "align",
                                    "input scales " + ", ".join(f"{s:.6g}" for s in scales), why))


def write_json(report: CheckReport, path: str | os.PathLike[str]) -> Path:
    """Writes ``report`` as JSON to ``path`` atomically; returns the path."""
    import json

    from fcnquant._io import atomic_write_text

    atomic_write_text(path, json.dumps(report.to_dict(), indent=1) + "\n")
    return Path(path)
