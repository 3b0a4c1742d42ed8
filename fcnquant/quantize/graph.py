"""Small read/write helpers over an ``onnx.GraphProto`` shared by the QDQ graph passes."""
from __future__ import annotations

import heapq


def producers(graph) -> dict[str, object]:
    """Returns {tensor name: node producing it}."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph) -> dict[str, list]:
    """Returns {tensor name: nodes consuming it, in graph order}."""
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def graph_outputs(graph) -> set[str]:
    """Returns the names of the graph outputs."""
    return {o.name for o in graph.output}


def remove_nodes(graph, doomed: list) -> None:
    """Removes the given nodes (by identity) from the graph, keeping the order of the rest."""
    ids = {id(n) for n in doomed}
    keep = [n for n in graph.node if id(n) not in ids]
    del graph.node[:]
    graph.node.extend(keep)


def prune_initializers(graph) -> int:
    """Removes initializers that no node reads and that are not graph outputs; returns how many were removed."""
    used = {name for node in graph.node for name in node.input} | graph_outputs(graph)
    keep = [t for t in graph.initializer if t.name in used]
    removed = len(graph.initializer) - len(keep)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed


def rename_input(graph, old: str, new: str) -> None:
    """Makes every node that reads ``old`` read ``new`` instead."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def unique_name(taken: set[str], base: str) -> str:
    """Returns ``base`` or ``base_<k>`` for the first k that is not in ``taken``, and adds it to ``taken``."""
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def sort_topologically(graph) -> None:
    """Reorders the graph's nodes topologically in place, keeping the existing order wherever it is valid.

    Raises ValueError on a cycle. Tensors from graph inputs, initializers or outer scopes count as available.
    """
    made_by = producers(graph)
    nodes = list(graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}
    waiting: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {index[id(made_by[x])] for x in node.input if x in made_by}
        deps.discard(i)
        waiting[i] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
