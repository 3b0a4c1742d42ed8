"""Which nodes stay in float: exclusion by node name, by op type, or by a regular expression over node names.

Node names are those of the float model as given; nothing renames them before quantization (no
``quant_pre_process``, no onnxruntime graph optimisation), so a name seen in Netron or in ``compare``'s report
is the name to exclude. Nodes without a name get ``<OpType>_<index>`` (index in the graph's node list), which
is what the tools report for them too.
"""
from __future__ import annotations

import re
from typing import Iterable

from fcnquant.errors import FcnquantError
from fcnquant.graph import unique_name


def name_unnamed_nodes(model) -> list[str]:
    """Gives every unnamed node the name ``<OpType>_<index>`` (made unique) in place; returns the new names."""
    taken = {n.name for n in model.graph.node if n.name}
    named: list[str] = []
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = unique_name(taken, f"{node.op_type}_{i}")
            named.append(node.name)
    return named


def resolve_exclusions(
    model,
    nodes: Iterable[str] = (),
    ops: Iterable[str] = (),
    regex: str | Iterable[str] | None = None,
) -> list[str]:
    """Returns the names of the nodes to keep in float, in graph order.

    Every name, op type and pattern must match at least one node, else FcnquantError says what the model has.
    A pattern matches a node whose whole name it matches (``re.fullmatch``).
    """
    graph_nodes = list(model.graph.node)
    names = {n.name for n in graph_nodes}
    op_types = {n.op_type for n in graph_nodes}
    wanted_names = list(nodes)
    wanted_ops = list(ops)
    patterns = [regex] if isinstance(regex, str) else list(regex or [])

    unknown = [n for n in wanted_names if n not in names]
    if unknown:
        sample = ", ".join(sorted(names)[:6])
        raise FcnquantError(f"no node named {unknown} in the model (node names look like: {sample})")
    unknown_ops = [o for o in wanted_ops if o not in op_types]
    if unknown_ops:
        raise FcnquantError(f"no node of op type {unknown_ops} in the model (it has {sorted(op_types)})")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise FcnquantError(f"bad exclusion pattern '{p}': {exc}") from None
    for p, c in zip(patterns, compiled):
        if not any(c.fullmatch(n) for n in names):
            raise FcnquantError(f"exclusion pattern '{p}' matches no node name")

    chosen = set(wanted_names)
    out = []
    for node in graph_nodes:
        if node.name in chosen or node.op_type in wanted_ops or any(c.fullmatch(node.name) for c in compiled):
            out.append(node.name)
    return list(dict.fromkeys(out))


def split_names_and_patterns(items: Iterable[str], model) -> tuple[list[str], list[str]]:
    """Returns (exact node names, regex patterns): an item equal to a node name is a name, otherwise a pattern."""
    names = {n.name for n in model.graph.node}
    exact = [s for s in items if s in names]
    patterns = [s for s in items if s not in names]
    return exact, patterns
