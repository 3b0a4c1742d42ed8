"""Building the int8 model for one set of float layers: the one callable the search is parameterised by.

A :class:`Builder` turns a set of node names into a model file. The search never calibrates: the default
:class:`QuantizeBuilder` holds one calibration table (statistics collected once, before the search) and calls
``fcnquant.quantize.quantize_model`` per evaluation, the candidate's nodes excluded. Recovery (``fcnquant.recover``:
power-of-two scales by error, bias correction) is another Builder, :class:`RecoveryBuilder`.

``fallback="int16"`` quantizes the excluded nodes' output activations to symmetric int16 instead of the target's
8-bit type (``QuantConfig.int16_tensors``; weights stay int8): no layer leaves the integer domain.
``fallback="fp16"`` turns the excluded nodes into float16 islands: onnxruntime's float16 converter with every
other node on its node block list, so only the excluded nodes (and the weights only they read) become float16,
with Casts at the island's borders. For targets that run fp16 (TensorRT, most NPUs); onnxruntime's CPU provider
runs them too, which is how the tuner measures them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from fcnquant.errors import FcnquantError
from fcnquant.quantize import QuantConfig
from fcnquant.recover.plan import RecoveryPlan

log = logging.getLogger(__name__)

FALLBACKS = ("float", "fp16", "int16")

def target_fallbacks(target) -> tuple[str, ...]:
    """Returns the fallbacks ``target`` (a name, a target file or a ``fcnquant.targets.Target``) allows: its
    ``fallbacks`` (npu-pow2: int16 only; ort-cpu and tensorrt: int16, fp16 and float)."""
    from fcnquant.calibrate.qparams import get_target

    return tuple(get_target(target).fallbacks)


def resolve_fallback(fallback: str | None, target) -> str:
    """Returns the fallback a tune on ``target`` uses: ``fallback`` when the target allows it (FcnquantError
    otherwise); None: ``float`` where allowed, else the target's first fallback."""
    allowed = target_fallbacks(target)
    if fallback is None:
        return "float" if "float" in allowed else allowed[0]
    if fallback not in FALLBACKS:
        raise FcnquantError(f"unknown fallback '{fallback}' (choose from {', '.join(FALLBACKS)})")
    if fallback not in allowed:
        from fcnquant.calibrate.qparams import get_target

        name = get_target(target).name
        raise FcnquantError(f"target {name} does not allow the {fallback} fallback (it allows {', '.join(allowed)})")
    return fallback


@runtime_checkable
class Builder(Protocol):
    """Writes the int8 model with the nodes ``excluded`` kept out of int8 to ``out`` and returns ``out``."""

    def build(self, excluded: frozenset[str], out: Path) -> Path:
        """Returns ``out`` after writing the model there (nothing else is calibrated or collected)."""
        ...


class QuantizeBuilder:
    """The default Builder: ``quantize_model`` with one precomputed table, then the fallback for the excluded.

    ``quant``: target, weight granularity and the nodes kept in float in every candidate (the candidate's own
    nodes are added to ``quant.exclude_nodes``).
    """

    def __init__(self, model: str | os.PathLike[str], table, quant: QuantConfig | None = None,
                 fallback: str = "float") -> None:
        if fallback not in FALLBACKS:
            raise FcnquantError(f"unknown fallback '{fallback}' (choose from {', '.join(FALLBACKS)})")
        self.model = Path(model)
        self.table = table
        self.quant = quant if quant is not None else QuantConfig()
        self.fallback = fallback
        self.last = None  # the QuantizeResult of the latest build
        self._outputs: dict[str, tuple[str, ...]] | None = None

    def config(self, nodes: list[str]) -> QuantConfig:
        """Returns the QuantConfig of a candidate with ``nodes`` kept out of int8 (int16: their quantized output
        activations escalated to int16)."""
        if self.fallback == "int16":
            tensors = {t for n in nodes for t in self._node_outputs().get(n, ())}
            return self.quant.with_(int16_tensors=tuple(sorted(set(self.quant.int16_tensors) | tensors)))
        return self.quant.with_(exclude_nodes=tuple(sorted(set(self.quant.exclude_nodes) | set(nodes))))

    def _node_outputs(self) -> dict[str, tuple[str, ...]]:
        """Returns {node name: its outputs that the QDQ graph quantizes} of the float model (read once)."""
        if self._outputs is None:
            from fcnquant._io import load_onnx
            from fcnquant.calibrate.tensors import analyse
            from fcnquant.quantize.exclude import name_unnamed_nodes

            model = load_onnx(self.model)
            name_unnamed_nodes(model)
            plan = analyse(model)
            quantized = (set(plan.observed) | set(plan.inherited)) - {o.name for o in model.graph.output}
            self._outputs = {n.name: tuple(o for o in n.output if o in quantized) for n in model.graph.node}
        return self._outputs

    def build(self, excluded: frozenset[str], out: Path) -> Path:
        """Returns ``out`` after writing the int8 model with ``excluded`` in float (or fp16) there."""
        from fcnquant.quantize import quantize_model

        nodes = sorted(excluded)
        with _quiet("fcnquant.quantize"):
            self.last = quantize_model(self.model, self.table, out, self.config(nodes), check=False)
        if self.fallback == "fp16" and nodes:
            to_fp16_islands(out, nodes, out)
        return Path(out)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raises logger ``name`` to WARNING for the block: one "wrote ..." line per candidate model is noise."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def to_fp16_islands(model_path: Path, nodes, out: Path) -> None:
    """Rewrites ``model_path`` to ``out`` with only ``nodes`` in float16 (Casts around them), atomically."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from fcnquant._io import atomic_path, load_onnx
    from fcnquant.errors import ModelError
    from fcnquant.graph import sort_topologically
    from fcnquant.quantize.fp16 import clamp_to_fp16_range

    model = load_onnx(model_path)
    wanted = set(nodes)
    blocked = [n.name for n in model.graph.node if n.name not in wanted]
    clamp_to_fp16_range(model)
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot type
        raise ModelError(f"float16 conversion of the float layers failed: {exc}") from exc
    _drop_cast_pairs(converted)
    _follow_renames(converted)
    sort_topologically(converted.graph)
    with atomic_path(out) as tmp:
        onnx.save_model(converted, str(tmp))


def _follow_renames(model) -> None:
    """Points the tensor map (``fcnquant.tensor_map``) at the names the converter gave tensors it renamed."""
    import json

    from fcnquant.quantize.name_map import TENSOR_MAP_KEY, set_metadata

    meta = {p.key: p.value for p in model.metadata_props}
    if TENSOR_MAP_KEY not in meta:
        return
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    mapping = json.loads(meta[TENSOR_MAP_KEY])
    for key, value in mapping.items():
        if value not in produced and f"{value}_cast_to_fp16" in produced:
            mapping[key] = f"{value}_cast_to_fp16"
    set_metadata(model, {TENSOR_MAP_KEY: json.dumps(mapping, sort_keys=True)})


def _drop_cast_pairs(model) -> int:
    """Removes float32 -> float16 -> float32 Cast pairs in place; returns how many were bypassed.

    The converter types every tensor float16 first and then casts into and out of each blocked node, so a tensor
    between two blocked (float32) nodes would be rounded to float16 on the way. Consumers of such a pair read the
    float32 tensor directly; Casts left without consumers are dropped.
    """
    from onnx import TensorProto

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    renamed: dict[str, str] = {}
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        source = producer.get(first.input[0])
        if (source is None and first.input[0] not in float_inputs) or (
                source is not None and source.op_type == "Cast" and cast_to(source) != TensorProto.FLOAT):
            continue
        if node.output[0] in outputs and source is not None:  # the pair ends in a graph output: its producer writes the output instead
            old, new = first.input[0], node.output[0]
            source.output[list(source.output).index(old)] = new
            for other in graph.node:
                for k, name in enumerate(other.input):
                    if name == old:
                        other.input[k] = new
            node.output[0] = f"{new}::unused"
            continue
        renamed[node.output[0]] = first.input[0]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    used = {i for n in graph.node for i in n.input} | outputs
    changed = True
    while changed:  # drop Casts whose outputs nobody reads
        changed = False
        keep = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)
            used = {i for n in graph.node for i in n.input} | outputs
            changed = True
    return len(renamed)


class RecoveryBuilder(QuantizeBuilder):
    """The Builder of recovery: ``fcnquant.recover``'s passes for the target, on every candidate model.

    The default ``plan`` is what ``fcnquant.recover.resolve_plan(target, per_channel, recover=True)`` turns on,
    except the scale search by output error (a minute of inference per candidate) and cross-layer equalization: the
    search ranks and compares layers against the float model's own activations, which equalization rescales
    channel by channel. So: power-of-two scales by expected error (a second table from the same statistics, no
    inference), then per candidate the emission and the layer-wise bias correction of its int8 layers on the
    calibration images (``D`` passes, the depth of the Conv dependency graph), run in this process with
    onnxruntime's own thread count. A given ``plan`` may choose the
    power-of-two rounding and bias correction (one error, not ``auto``); the other passes change the float
    model or cost inference per candidate, and are refused. ``tap_means``: the float model's tap means for the fast
    bias correction (:meth:`tap_accumulators`, gathered in the calibration pass); without them every candidate's
    correction runs a float pass of its own, measuring the same means again.
    """

    @staticmethod
    def default_plan(quant: QuantConfig) -> RecoveryPlan:
        """Returns the plan the builder runs when none is given (see the class docstring)."""
        from fcnquant.recover.plan import resolve_plan

        return resolve_plan(quant.target, quant.per_channel, recover=True, equalize=False, scale_search=False)

    @staticmethod
    def tap_accumulators(model, plan: RecoveryPlan) -> dict:
        """Returns the collection pass's ``extra`` statistics for ``plan``'s fast bias correction of the float model
        ``model`` (a path), {} when the plan does not run it."""
        if not (plan.bias_correction and plan.bias_correction_error == "weights"
                and plan.bias_correction_form in (None, "fast")):
            return {}
        from fcnquant._io import load_onnx
        from fcnquant.recover.bias_correction import float_tap_accumulators

        return float_tap_accumulators(load_onnx(model))

    def __init__(self, model, stats, table, dataset, quant: QuantConfig | None = None, fallback: str = "float",
                 plan: RecoveryPlan | None = None, tap_means: dict | None = None) -> None:
        from fcnquant.calibrate import build_table

        quant = quant if quant is not None else QuantConfig()
        plan = plan if plan is not None else self.default_plan(quant)
        check_plan(plan)
        self.plan = plan
        self.tap_means = tap_means
        if self.plan.pow2_rounding != getattr(table, "pow2_rounding", "up"):
            table = build_table(stats, table.method, quant.target, pow2_rounding=self.plan.pow2_rounding,
                                **table.params)
        super().__init__(model, table, quant.with_(pow2_rounding=self.plan.pow2_rounding), fallback=fallback)
        self.dataset = dataset
        self.ids = list(stats.image_ids)
        self.last_recovery: dict = {}

    def build(self, excluded: frozenset[str], out: Path) -> Path:
        """Returns ``out`` after writing the recovered int8 model with ``excluded`` in float (or fp16) there."""
        import json

        import onnx

        from fcnquant._io import atomic_path
        from fcnquant.data import DataConfig
        from fcnquant.execute import RunConfig
        from fcnquant.quantize import quantize_model
        from fcnquant.quantize.name_map import set_metadata
        from fcnquant.recover.bias_correction import BiasCorrectionOptions, correct_biases
        from fcnquant.recover.plan import RECOVERY_METADATA_KEY

        nodes = sorted(excluded)
        with _quiet("fcnquant.quantize"), _quiet("fcnquant.recover"):
            self.last = quantize_model(self.model, self.table, out, self.config(nodes), check=False)
            record = {"passes": [p for p in self.plan.names() if p != "equalize"]}
            if self.plan.pow2_rounding != "up":
                record["pow2_rounding"] = self.plan.pow2_rounding
            qmodel = onnx.load(str(out))
            if self.plan.bias_correction:
                bc = correct_biases(qmodel, self.model, DataConfig(root=self.dataset, ids=tuple(self.ids)),
                                    RunConfig(progress=False),
                                    BiasCorrectionOptions(error=self.plan.bias_correction_error,
                                                          form=self.plan.bias_correction_form
                                                          if self.plan.bias_correction_error == "weights" else None),
                                    tap_means=self.tap_means)
                qmodel = bc.model
                record["bias_correction"] = {**{k: v for k, v in bc.to_dict().items() if k != "layers"},
                                             "layers": len(bc.layers)}
            set_metadata(qmodel, {RECOVERY_METADATA_KEY: json.dumps(record, sort_keys=True)})
            with atomic_path(out) as tmp:
                onnx.save_model(qmodel, str(tmp))
        self.last_recovery = record
        if self.fallback == "fp16" and nodes:
            to_fp16_islands(out, nodes, out)
        return Path(out)


def check_plan(plan: RecoveryPlan) -> None:
    """Raises FcnquantError for a recovery pass the tuner cannot run per candidate."""
    refused = [name for name, on in (("equalize", plan.equalize), ("adaround", plan.adaround),
                                     ("scale search", plan.scale_search)) if on]
    if refused:
        raise FcnquantError(f"tune cannot run {', '.join(refused)} on its candidates: equalization rescales the "
                            "float model the search compares against; AdaRound and the scale search cost minutes "
                            "of inference per candidate")
    if plan.bias_correction and plan.bias_correction_error == "auto":
        raise FcnquantError("tune's bias correction needs one error ('weights' or 'accumulated'), not 'auto': "
                            "choosing by output error costs inference per candidate")
