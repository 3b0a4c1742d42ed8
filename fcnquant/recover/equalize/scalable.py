"""Graph analysis for cross-layer equalization: which Conv outputs can be rescaled per channel, and where to compensate.

Only the top-level graph is analysed. Rules, for every ``Conv`` / ``ConvTranspose`` node P (the *producer*):

1. P's weight (and bias, when present) must be a float initializer that is not also a graph input (which would
   let a caller override it) and that no other node reads. Otherwise P is skipped, naming the weight and the
   other reader: scaling a shared weight would change the other node too.
2. Follow P's output through ops that commute with a positive per-channel scale: ``Relu``, ``LeakyRelu``,
   ``PRelu`` (data input), ``MaxPool`` / ``AveragePool`` / ``GlobalMaxPool`` / ``GlobalAveragePool``,
   ``Resize`` / ``Upsample`` (not ``tf_crop_and_resize`` with a non-zero extrapolation value), ``Identity``,
   ``Dropout`` (mask unused) and ``Concat`` on the channel axis (the offset of P's channels is tracked).
3. Every use reached must be the data input of a ``Conv`` / ``ConvTranspose`` (a *consumer*) whose weight
   satisfies rule 1, or an ``Add`` whose other input can be rescaled the same way: it must come (through
   transparent ops and further Adds) from Convs only, which then join P as producers of one *channel space*
   (s(a) + s(b) = s(a + b)). A ResNet stage is one such space: every block's ``conv3``, the ``downsample`` conv
   and the residual stream between them, consumed by the next blocks' ``conv1`` and the next stage. Any other
   use (``Mul``, ``Sigmoid``, a graph output, a second MaxPool output, a Conv's weight input, an Add with a
   graph input or a non-Conv tensor, an Add behind a Concat, ...) makes P unscalable and P is skipped with that
   use named: e.g. FCN's score convs, whose skip ``Add`` meets the upsampled logits of a graph output.
4. Grouped and depthwise weights are handled exactly on either side (see :mod:`fcnquant.recover.equalize.cle`); a
   missing bias is fine (nothing to scale there).
5. High-bias absorption additionally needs: a single producer without residual Adds; P's output feeds exactly
   one node, a ``Relu``; every op after that
   Relu shifts with a per-channel constant (``MaxPool``, ``GlobalMaxPool``, ``AveragePool`` without padding
   counted, ``GlobalAveragePool``, ``Resize`` nearest/linear, ``Identity``, ``Dropout``, ``Concat``); every
   consumer is a ``Conv`` with no padding. A padded consumer sees zeros at the border where the absorbed
   constant would have been, so absorbing into it is not function-preserving; the reason is recorded and
   ``allow_padded=True`` lifts it (the border error is then the caller's to accept).
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: ops through which a positive per-channel scale passes unchanged (rule 2)
SCALE_TRANSPARENT = frozenset({
    "Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool",
    "Resize", "Upsample", "Identity", "Dropout", "Concat",
})
#: ops after the Relu through which subtracting a per-channel constant passes unchanged (rule 5)
_SHIFT_TRANSPARENT = frozenset({
    "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Upsample", "Identity", "Dropout",
    "Concat",
})
_WEIGHTED = frozenset({"Conv", "ConvTranspose"})
_FLOAT_TYPES = frozenset({1, 11})  # FLOAT, DOUBLE


@dataclass(frozen=True)
class ConsumerSite:
    """A consumer Conv of a scalable tensor: its node, weight, bias, layout and the producer's channel offset."""

    node: str
    weight: str
    bias: str | None
    transposed: bool
    group: int
    offset: int
    padded: bool


@dataclass(frozen=True)
class ProducerSite:
    """A producer Conv of a channel space: its node, weight, bias, layout and output tensor."""

    node: str
    weight: str
    bias: str | None
    transposed: bool
    group: int
    output: str


@dataclass(frozen=True)
class ScalablePair:
    """Producers sharing one channel space (one Conv, or several joined by residual Adds), with every consumer.

    Rescaling channel i of every producer by 1/s_i and of every consumer's input slice by s_i keeps the function.
    """

    producers: tuple[ProducerSite, ...]
    channels: int
    consumers: tuple[ConsumerSite, ...]
    adds: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()  # every tensor holding exactly these channels (scaled by 1/s_i with them)
    partial_tensors: tuple[str, ...] = ()  # tensors behind a Concat that hold these channels among others
    path_ops: tuple[str, ...] = ()
    absorb_blocker: str | None = None  # why high-bias absorption does not apply (None: it does)
    padded_only: bool = False  # absorption is blocked only by padded consumers (rule 5, allow_padded lifts it)

    @property
    def producer(self) -> str:
        """Returns the name of the pair: its first producer in graph order."""
        return self.producers[0].node

    @property
    def output(self) -> str:
        """Returns the first producer's output tensor (the only one when there is no residual Add)."""
        return self.producers[0].output


@dataclass(frozen=True)
class Skip:
    """A Conv that is not equalized, and why."""

    node: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Returns {"node", "reason"}."""
        return {"node": self.node, "reason": self.reason}


@dataclass
class _Graph:
    nodes: list
    names: dict[int, str]
    inits: dict[str, object]
    graph_inputs: set[str]
    graph_outputs: set[str]
    users: dict[str, list[tuple[object, int]]] = field(default_factory=dict)
    made_by: dict[str, object] = field(default_factory=dict)
    channels: dict[str, int] | None = None  # from shape inference, computed on first need
    model: object = None
    by_name: dict[str, object] = field(default_factory=dict)


class _Unsafe(Exception):
    pass


def display_name(node, index: int) -> str:
    """Returns the node's name, or ``<OpType>_<index>`` (its index in the graph) for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


def nodes_by_name(model) -> dict[str, object]:
    """Returns {display name: node} for the top-level graph (see :func:`display_name`)."""
    return {display_name(n, i): n for i, n in enumerate(model.graph.node)}


def find_pairs(model) -> tuple[list[ScalablePair], list[Skip]]:
    """Returns (the scalable pairs in graph order, the Conv/ConvTranspose nodes skipped with their reasons)."""
    g = _index(model)
    pairs: list[ScalablePair] = []
    skipped: list[Skip] = []
    done: set[int] = set()
    for node in g.nodes:
        if node.op_type not in _WEIGHTED or id(node) in done:
            continue
        try:
            pair = _Closure(g, node).pair()
        except _Unsafe as exc:
            skipped.append(Skip(g.names[id(node)], str(exc)))
            continue
        done.update(id(g.by_name[p.node]) for p in pair.producers)
        pairs.append(pair)
    return pairs, skipped


def _index(model) -> _Graph:
    graph = model.graph
    nodes = list(graph.node)  # the list keeps the node wrappers alive, so their ids stay valid keys
    g = _Graph(
        nodes=nodes, names={id(n): display_name(n, i) for i, n in enumerate(nodes)},
        inits={t.name: t for t in graph.initializer},
        graph_inputs={i.name for i in graph.input}, graph_outputs={o.name for o in graph.output},
    )
    g.by_name = {g.names[id(n)]: n for n in nodes}
    for node in g.nodes:
        for k, x in enumerate(node.input):
            if x:
                g.users.setdefault(x, []).append((node, k))
        for y in node.output:
            if y:
                g.made_by[y] = node
    g.model = model
    return g


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constant(g: _Graph, node, k: int, role: str) -> str | None:
    """Returns the initializer name of input k (None when absent), or raises _Unsafe naming the problem."""
    if k >= len(node.input) or not node.input[k]:
        return None
    name = node.input[k]
    if name not in g.inits:
        what = f"computed by {g.names[id(g.made_by[name])]}" if name in g.made_by else "not an initializer"
        raise _Unsafe(f"{role} '{name}' of {g.names[id(node)]} is not a constant ({what})")
    if name in g.graph_inputs:
        raise _Unsafe(f"{role} '{name}' of {g.names[id(node)]} is also a graph input (can be overridden)")
    if g.inits[name].data_type not in _FLOAT_TYPES:
        raise _Unsafe(f"{role} '{name}' of {g.names[id(node)]} is not float32/float64")
    others = [g.names[id(n)] for n, _ in g.users.get(name, []) if n is not node]
    if others or len(g.users.get(name, [])) > 1:
        who = ", ".join(others) if others else f"{g.names[id(node)]} (twice)"
        raise _Unsafe(f"{role} '{name}' of {g.names[id(node)]} is shared with {who}")
    return name


def _layout(g: _Graph, node) -> tuple[str, str | None, bool, int]:
    w = _constant(g, node, 1, "weight")
    if w is None:
        raise _Unsafe(f"{g.names[id(node)]} has no weight input")
    b = _constant(g, node, 2, "bias")
    group = int(_attr(node, "group", 1))
    dims = list(g.inits[w].dims)
    if len(dims) < 3 or dims[0] % group:
        raise _Unsafe(f"weight '{w}' of {g.names[id(node)]} has shape {dims}, not a Conv weight for group {group}")
    return w, b, node.op_type == "ConvTranspose", group


def _out_channels(g: _Graph, node) -> int:
    dims = list(g.inits[node.input[1]].dims)
    return dims[0] if node.op_type == "Conv" else dims[1] * int(_attr(node, "group", 1))


def _padded(node) -> bool:
    pads = _attr(node, "pads", None)
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return (pads is not None and any(int(p) != 0 for p in pads)) or auto in ("SAME_UPPER", "SAME_LOWER")


class _Closure:
    """The channel space of one Conv's output: every tensor that carries the same channels at the same positions.

    Forward from a tensor: through scale-transparent ops, into consumer Convs, and through residual ``Add``s, whose
    other input then joins the space (backward: it must come from Convs, transparent ops or Adds of the space).
    """

    def __init__(self, g: _Graph, root) -> None:
        self.g = g
        self.root = root
        self.producers: list = []
        self.forwarded: set[str] = set()
        self.sites: list[ConsumerSite] = []
        self.path: list[str] = []
        self.adds: list[str] = []
        self.shift_blockers: list[str] = []
        self.partial: list[str] = []

    def pair(self) -> ScalablePair:
        g = self.g
        self.add_producer(self.root)
        name = g.names[id(self.root)]
        if not self.sites:
            raise _Unsafe(f"output '{self.root.output[0]}' of {name} reaches no Conv")
        channels = _out_channels(g, self.root)
        sites = []
        for node in self.producers:
            c = _out_channels(g, node)
            if c != channels:
                raise _Unsafe(f"{g.names[id(node)]} ({c} channels) and {name} ({channels}) meet in an Add")
            w, b, transposed, group = _layout(g, node)
            sites.append(ProducerSite(g.names[id(node)], w, b, transposed, group, node.output[0]))
        order = {id(n): i for i, n in enumerate(g.nodes)}
        sites.sort(key=lambda p: order[id(g.by_name[p.node])])
        blocker, padded_only = self._absorb_blocker(name)
        return ScalablePair(
            producers=tuple(sites), channels=channels, consumers=tuple(self.sites),
            adds=tuple(dict.fromkeys(self.adds)), tensors=tuple(sorted(self.forwarded)),
            partial_tensors=tuple(dict.fromkeys(self.partial)),
            path_ops=tuple(self.path), absorb_blocker=blocker, padded_only=padded_only,
        )

    def _absorb_blocker(self, name: str) -> tuple[str | None, bool]:
        g = self.g
        users = g.users.get(self.root.output[0], [])
        if self.adds:
            return f"the channels pass through residual Add(s) {', '.join(self.adds)}", False
        if len(users) != 1 or users[0][0].op_type != "Relu":
            return f"output of {name} does not go into a single Relu", False
        if self.shift_blockers:
            return self.shift_blockers[0], False
        if any(s.transposed for s in self.sites):
            return "a consumer is a ConvTranspose (its border taps vary with the output position)", False
        padded = [s.node for s in self.sites if s.padded]
        if padded:
            return (f"consumer(s) {', '.join(padded)} pad with zeros (the absorbed constant would be missing at "
                    "borders)"), True
        return None, False

    def add_producer(self, node) -> None:
        if any(p is node for p in self.producers):
            return
        _layout(self.g, node)  # weight checks (rule 1)
        self.producers.append(node)
        self.forward(node.output[0], after_relu=False)

    def forward(self, tensor: str, after_relu: bool) -> None:
        g = self.g
        if tensor in self.forwarded:
            return
        self.forwarded.add(tensor)
        if tensor in g.graph_outputs:
            via = f" through Add {', '.join(dict.fromkeys(self.adds))}" if self.adds else ""
            raise _Unsafe(f"'{tensor}' (from {g.names[id(self.root)]}{via}) is a graph output")
        for user, k in g.users.get(tensor, []):
            op = user.op_type
            uname = g.names[id(user)]
            if op in _WEIGHTED and k == 0:
                w, b, transposed, group = _layout(g, user)
                self.sites.append(ConsumerSite(uname, w, b, transposed, group, 0, _padded(user)))
            elif op == "Add":
                if len(user.input) != 2 or user.input[0] == user.input[1]:
                    raise _Unsafe(f"Add {uname} does not add two distinct tensors")
                self.adds.append(uname)
                self.backward(user.input[1 - k])
                self.forward(user.output[0], after_relu)
            elif op == "Concat":
                offset = _concat_offset(g, user, k, tensor)
                self.path.append(op)
                if not after_relu:
                    self.shift_blockers.append(f"Concat {uname} comes before any Relu")
                _trace(g, user.output[0], offset, self.sites, self.path, self.shift_blockers, after_relu, self.root,
                       self.partial)
            else:
                _check_transparent(g, user, k, tensor)
                self.path.append(op)
                _note_shift(user, uname, after_relu, self.shift_blockers)
                self.forward(user.output[0], after_relu or op == "Relu")

    def backward(self, tensor: str) -> None:
        """Makes ``tensor`` (the other input of a residual Add) part of the space, or raises _Unsafe."""
        g = self.g
        if tensor in self.forwarded:
            return
        node = g.made_by.get(tensor)
        if node is None:
            raise _Unsafe(f"'{tensor}' joins a residual Add of the channels of {g.names[id(self.root)]} but is not "
                          "computed by a node")
        op = node.op_type
        if op in _WEIGHTED:
            self.add_producer(node)
        elif op == "Add":
            for x in node.input:
                self.backward(x)
            self.forward(tensor, after_relu=True)
        elif op in SCALE_TRANSPARENT and op != "Concat" and tensor == node.output[0]:
            self.backward(node.input[0])
            self.forward(tensor, after_relu=True)
        else:
            raise _Unsafe(f"'{tensor}' joins a residual Add of the channels of {g.names[id(self.root)]} but comes "
                          f"from {op} {g.names[id(node)]}, which cannot be rescaled")


def _check_transparent(g: _Graph, user, k: int, tensor: str) -> None:
    op, uname = user.op_type, g.names[id(user)]
    if op not in SCALE_TRANSPARENT:
        raise _Unsafe(f"'{tensor}' feeds {op} {uname}, which does not commute with a per-channel scale")
    if op != "Concat" and k != 0:
        raise _Unsafe(f"'{tensor}' is input {k} (not the data input) of {op} {uname}")
    used = [y for y in user.output[1:] if y and (y in g.users or y in g.graph_outputs)]
    if used:
        raise _Unsafe(f"{op} {uname} on the path has its extra output '{used[0]}' in use")
    if op in ("Resize", "Upsample"):
        _check_resize(g, user)


def _note_shift(user, uname: str, after_relu: bool, blockers: list[str]) -> None:
    op = user.op_type
    if after_relu or op == "Relu":
        if op != "Relu" and not _shift_ok(user):
            blockers.append(f"{op} {uname} does not commute with a per-channel shift")
    elif op != "Relu":
        blockers.append(f"{op} {uname} comes before any Relu")


def _trace(g: _Graph, tensor: str, offset: int, sites: list, path: list, shift_blockers: list,
           after_relu: bool, root, partial: list) -> None:
    """Follows a tensor that holds the space's channels at ``offset`` (behind a Concat) to its consumer Convs."""
    partial.append(tensor)
    if tensor in g.graph_outputs:
        raise _Unsafe(f"'{tensor}' (from {g.names[id(root)]}) is a graph output")
    for user, k in g.users.get(tensor, []):
        uname = g.names[id(user)]
        op = user.op_type
        if op in _WEIGHTED and k == 0:
            w, b, transposed, group = _layout(g, user)
            sites.append(ConsumerSite(uname, w, b, transposed, group, offset, _padded(user)))
            continue
        _check_transparent(g, user, k, tensor)
        new_offset = offset + _concat_offset(g, user, k, tensor) if op == "Concat" else offset
        path.append(op)
        _note_shift(user, uname, after_relu, shift_blockers)
        _trace(g, user.output[0], new_offset, sites, path, shift_blockers, after_relu or op == "Relu", root, partial)


def _concat_offset(g: _Graph, node, k: int, tensor: str) -> int:
    rank = None
    axis = int(_attr(node, "axis", 1))
    if axis < 0:
        rank = _rank(g, tensor)
        if rank is None:
            raise _Unsafe(f"Concat {g.names[id(node)]} has axis {axis} and the rank of its inputs is unknown")
        axis += rank
    if axis != 1:
        raise _Unsafe(f"Concat {g.names[id(node)]} joins axis {axis}, not the channel axis")
    total = 0
    for x in node.input[:k]:
        c = _channels_of(g, x)
        if c is None:
            raise _Unsafe(f"channel count of '{x}' (input of Concat {g.names[id(node)]}) is unknown")
        total += c
    return total


def _rank(g: _Graph, tensor: str) -> int | None:
    node = g.made_by.get(tensor)
    if node is not None and node.op_type in _WEIGHTED and node.input[1] in g.inits:
        return len(g.inits[node.input[1]].dims)
    return None


def _channels_of(g: _Graph, tensor: str) -> int | None:
    """Returns the channel count of ``tensor``: from its producer's weight where possible, else shape inference."""
    node = g.made_by.get(tensor)
    if node is not None and node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in g.inits:
        return _out_channels(g, node)
    if node is not None and node.op_type in SCALE_TRANSPARENT - {"Concat"}:
        c = _channels_of(g, node.input[0])
        if c is not None:
            return c
    return _inferred_channels(g).get(tensor)


def _inferred_channels(g: _Graph) -> dict[str, int]:
    import onnx

    if g.channels is None:
        graph = g.model.graph
        try:
            inferred = onnx.shape_inference.infer_shapes(g.model).graph
            infos = list(inferred.value_info) + list(inferred.output) + list(inferred.input)
        except Exception:  # shape inference is only a help for Concat offsets
            infos = list(graph.value_info) + list(graph.output) + list(graph.input)
        g.channels = {}
        for vi in infos:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) >= 2 and dims[1].HasField("dim_value"):
                g.channels[vi.name] = int(dims[1].dim_value)
    return g.channels


def _check_resize(g: _Graph, node) -> None:
    mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "tf_crop_and_resize" and float(_attr(node, "extrapolation_value", 0.0)) != 0.0:
        raise _Unsafe(f"Resize {g.names[id(node)]} extrapolates with a non-zero constant")


def _shift_ok(node) -> bool:
    op = node.op_type
    if op in ("Resize", "Upsample"):
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
        return mode in ("nearest", "linear") and ctm != "tf_crop_and_resize"
    if op == "AveragePool":
        return not (_padded(node) and int(_attr(node, "count_include_pad", 0)))
    return op in _SHIFT_TRANSPARENT
