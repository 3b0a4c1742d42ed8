"""Emits an int8 QDQ ONNX model from a float model and a calibration table, for one deployment target.

Steps (onnxruntime's QDQ quantizer does the graph surgery; fcnquant decides every number):

1. Validate before writing anything: the table's model sha256, every activation the graph needs present, finite
   ranges, positive finite scales, zero points valid for the target (``validate``).
2. Activations the QDQ graph needs (``fcnquant.calibrate.tensors``) get the table's scale / zero point; tensors
   that inherit a scale (MaxPool / Resize outputs, a Conv output fused with its Relu) get their source's. For a
   target that aligns Add/Concat inputs by shifts and rounds ties up (``npu-pow2``), an input read by the Add
   alone, finer than the sum, goes onto the sum's grid (``fcnquant.quantize.align``).
3. onnxruntime's ``quantize_static`` builds the QDQ graph from those exact parameters: weights int8 symmetric per
   output channel (axis 0 for Conv, 1 for ConvTranspose) or per tensor, biases int32 with
   ``scale = input scale x weight scale``; for ``npu-pow2`` the weight scales are powers of two given explicitly.
4. fcnquant's passes: Conv/Add + Relu as one unit for symmetric targets (``fuse_relu``), float logits unless
   ``quantize_output`` (``float_outputs``).
5. The float -> quantized tensor name map and the table's sha256 go into ``metadata_props``; the model (and, for
   ``tensorrt``, the calibration cache beside it) are written atomically, the model only once onnxruntime loads
   and runs it (``fcnquant.runtime.written_model``).

An already quantized model is refused. A model below opset 13 with per-channel weights is converted to opset 13
(``onnx.version_converter``, the route onnxruntime's own quantizer takes for opsets it cannot quantize at) before
emission: DequantizeLinear has its per-channel ``axis`` from opset 13 on, and per-tensor weights instead would cost
accuracy the user did not choose. A model the converter cannot convert is a one-line error suggesting per-tensor
weights.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from fcnquant import __version__
from fcnquant._io import atomic_path, file_sha256, load_onnx, model_digests
from fcnquant.calibrate.tensors import analyse
from fcnquant.errors import CalibrationError, FcnquantError, ModelError
from fcnquant.graph import require_float, sort_topologically
from fcnquant.quantize import align
from fcnquant.quantize import exclude as excl
from fcnquant.quantize.config import QuantConfig
from fcnquant.quantize.float_outputs import float_outputs
from fcnquant.quantize.fuse_relu import fuse_relu_qdq
from fcnquant.quantize.name_map import TABLE_SHA_KEY, TENSOR_MAP_KEY, build_tensor_map, set_metadata
from fcnquant.quantize.ort_backend import OrtJob, run_quantize_static
from fcnquant.quantize.profiles import Profile, get_profile
from fcnquant.quantize.validate import check_model_hash, resolve_qparams
from fcnquant.quantize.weights import weight_scales_for
from fcnquant.runtime import written_model
from fcnquant.targets import target_metadata

log = logging.getLogger(__name__)

#: op types whose data inputs should come from a DequantizeLinear in a fully int8 graph, with the input slots checked
INT8_OPS: dict[str, slice] = {
    "Conv": slice(0, 2), "ConvTranspose": slice(0, 2), "Gemm": slice(0, 2), "MatMul": slice(0, 2),
    "Add": slice(0, 2), "Mul": slice(0, 2), "Concat": slice(0, None),
    "MaxPool": slice(0, 1), "AveragePool": slice(0, 1), "Resize": slice(0, 1),
}


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_model`` wrote and how the graph came out."""

    path: Path
    target: str
    per_channel: bool
    quantize_output: bool
    table_sha256: str
    model_sha256: str
    tensor_map: dict[str, str]
    excluded_nodes: tuple[str, ...]
    float_nodes: tuple[str, ...]  # int8-capable nodes left in float (excluded, or outside the quantized region)
    quantized_nodes: int
    tensorrt_cache: Path | None
    size_bytes: int

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["tensorrt_cache"] = str(self.tensorrt_cache) if self.tensorrt_cache else None
        d["excluded_nodes"] = list(self.excluded_nodes)
        d["float_nodes"] = list(self.float_nodes)
        return d


def tensorrt_cache_path(out: str | os.PathLike[str]) -> Path:
    """Returns where the TensorRT calibration cache goes for the model ``out`` (``model.int8.onnx`` -> ``model.int8.cache``)."""
    return Path(out).with_suffix(".cache")


def quantize_model(
    model_path: str | os.PathLike[str],
    table,
    out: str | os.PathLike[str],
    config: QuantConfig | None = None,
    *,
    weight_scales: Mapping[str, tuple[np.ndarray, int | None]] | None = None,
    verify_table: bool = True,
    metadata: Mapping[str, str] | None = None,
    check: bool = True,
) -> QuantizeResult:
    """Returns the QuantizeResult of writing the int8 QDQ model of ``model_path`` to ``out``.

    ``table`` is a ``CalibrationTable`` or the path of its JSON file. ``config``
    (:class:`~fcnquant.quantize.QuantConfig`): the target, weight granularity, nodes kept in float and the
    power-of-two weight-scale rounding (``"error"``: each power-of-two weight scale of ``npu-pow2`` picked by
    squared error instead of rounding up, ``fcnquant.quantize.weights``). ``weight_scales`` ({initializer:
    (scales, axis)}, e.g. from AdaRound) fixes those weights' int8 scales. ``verify_table=False`` skips the
    table's model-sha256 check, for a model derived from the calibrated one by a function-preserving or
    weight-only rewrite (recovery passes); ``metadata`` is added to the model's ``metadata_props``. ``check=False``
    skips the onnxruntime load check of the written model, for a staged model that is run next anyway. Raises
    CalibrationError for a table that does not fit the model, ModelError for an already quantized model or a
    written model onnxruntime refuses (nothing is written then).
    """
    config = config or QuantConfig()
    target, per_channel, quantize_output = config.target, config.per_channel, config.quantize_output
    pow2_rounding = config.pow2_rounding
    profile = get_profile(target)
    _check_target_support(profile.target, per_channel)
    model_path = Path(model_path)
    out = Path(out)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise FcnquantError(f"output folder does not exist: {out.parent}")
    model, model_sha, (table, table_label, table_sha) = _load_inputs(model_path, table, verify_table,
                                                                      per_channel, weight_scales)

    excl.name_unnamed_nodes(model)
    excluded = excl.resolve_exclusions(model, config.exclude_nodes, config.exclude_ops,
                                      list(config.exclude_regex) or None)
    plan = analyse(model)  # which activations need a scale, which reuse another's (fcnquant.calibrate.tensors)
    activations, int16, moved = _all_activation_params(model, plan, table, table_label, profile, config)
    table_sha = table_sha or _table_sha256(table)  # after validation: saving checks the table too
    weights = _weight_overrides(model, profile, per_channel, set(excluded), pow2_rounding)
    fixed = dict(weight_scales or {})
    weights.update({k: (np.asarray(v[0], np.float32), v[1]) for k, v in fixed.items()})
    job = OrtJob(profile, per_channel, activations, weights, excluded + _float_output_activations(model, quantize_output),
                 fixed_weight_scales=profile.pow2 or bool(fixed), int16=frozenset(int16))
    if int16:
        to_opset(model, INT16_OPSET)

    # the float model's activation names, for the name map, before onnxruntime touches anything
    float_tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output if o}
    float_tensors -= {t.name for t in model.graph.initializer}
    # staged beside the output: it holds two copies of the model, more than a small TMPDIR may have room for
    with tempfile.TemporaryDirectory(prefix=".fcnquant-q-", dir=Path(out).parent) as tmp:
        src = Path(tmp) / "model.onnx"  # a copy: onnxruntime writes "<model>-inferred.onnx" beside its input
        _save(model, src)
        ort_out = Path(tmp) / "qdq.onnx"
        run_quantize_static(src, ort_out, Path(tmp) / "ranges.json", job)
        qmodel = load_onnx(ort_out)

    if moved:
        align.share_sum_scales(qmodel, moved)
    fused = fuse_relu_qdq(qmodel) if profile.symmetric else 0
    floated = [] if quantize_output else float_outputs(qmodel)
    sort_topologically(qmodel.graph)
    log.debug("fused %d Relu units, float outputs %s", fused, floated)
    tensor_map = build_tensor_map(qmodel, float_tensors)
    _drop_metadata(qmodel, "onnx.infer")  # onnxruntime's own marker
    set_metadata(qmodel, {
        TENSOR_MAP_KEY: json.dumps(tensor_map, sort_keys=True),
        TABLE_SHA_KEY: table_sha,
        "fcnquant.model_sha256": model_sha,
        "fcnquant.target": profile.name,
        **target_metadata(profile.target),
        "fcnquant.per_channel": "true" if per_channel else "false",
        "fcnquant.method": str(getattr(table, "method", "") or ""),  # shown by `fcnquant compare`
        "fcnquant.version": __version__,
        **({align.METADATA_KEY: json.dumps(moved, sort_keys=True)} if moved else {}),
        **dict(metadata or {}),
    })
    capable = _int8_capable(qmodel, set(plan.observed) | set(plan.inherited))
    float_nodes = _float_nodes(qmodel, capable)
    quantized = len(capable) - len(float_nodes)

    cache = tensorrt_cache_path(out) if profile.tensorrt_cache else None
    with (written_model(out) if check else atomic_path(out)) as tmp_out:
        _save(qmodel, tmp_out)
        if cache is not None:
            from fcnquant.calibrate.tensorrt import write_tensorrt_cache

            with atomic_path(cache) as tmp_cache:
                write_tensorrt_cache(_with_inherited(table, plan), tmp_cache)
    log.debug("wrote %s (%s, %d int8 nodes, %d float)", out, profile.name, quantized, len(float_nodes))
    return QuantizeResult(
        path=out, target=profile.name, per_channel=per_channel, quantize_output=quantize_output,
        table_sha256=table_sha, model_sha256=model_sha, tensor_map=tensor_map, excluded_nodes=tuple(excluded),
        float_nodes=tuple(float_nodes), quantized_nodes=quantized, tensorrt_cache=cache,
        size_bytes=out.stat().st_size,
    )


def _load_inputs(model_path: Path, table, verify_table: bool, per_channel: bool, weight_scales):
    """Returns ``(model, model_sha256, (table, table_label, table_sha))``: the float model checked for emission (and
    converted to the per-axis opset when per-channel weights need it), its identity, the table checked against it."""
    model = load_onnx(model_path)
    check_emittable(model, str(model_path))
    digests = model_digests(model_path)
    loaded = _load_table(table)
    if verify_table:
        check_model_hash(loaded[0], digests, str(model_path), loaded[1])
    if per_channel or any(v[1] is not None for v in (weight_scales or {}).values()):
        model = _with_per_axis_opset(model, str(model_path))
    return model, digests[0], loaded


def check_emittable(model, label: str, command: str = "quantize") -> None:
    """Raises ModelError (one line) for a model int8 emission cannot start from: an already quantized one, or one
    with float16 weights or input (onnxruntime's quantizer writes float16 scales, which DequantizeLinear refuses)."""
    from onnx import TensorProto

    require_float(model, label, command)
    inputs = [i for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT16]
    halves = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    if inputs or halves:
        what = f"input '{inputs[0].name}'" if inputs else f"weights ('{halves[0]}')"
        raise ModelError(f"{label} is a float16 model ({what}); int8 emission takes the float32 model "
                         "(a table alone, calibrate --table-only, works on float16)")


#: the first opset whose DequantizeLinear takes an ``axis`` (per-channel scales)
PER_AXIS_OPSET = 13


def _with_per_axis_opset(model, label: str):
    """Returns ``model``, converted to :data:`PER_AXIS_OPSET` when its default-domain opset is lower (ModelError
    when onnx's version converter cannot convert it)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= PER_AXIS_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, PER_AXIS_OPSET)
    except Exception as exc:  # the converter raises RuntimeError / assertion texts
        cause = " ".join(str(exc).split())
        raise ModelError(f"{label} has opset {opset}, whose DequantizeLinear has no per-channel axis, and onnx cannot "
                         f"convert it to opset {PER_AXIS_OPSET} ({cause}); convert the model to opset "
                         f"{PER_AXIS_OPSET} or quantize with per-tensor weights") from exc
    log.info("%s: opset %d converted to %d for per-channel weights (DequantizeLinear's axis)", label, opset,
             PER_AXIS_OPSET)
    return converted


def _check_target_support(target, per_channel: bool) -> None:
    """Raises FcnquantError for a target this emitter cannot serve, or a weight granularity it forbids."""
    if target.weight_dtype != "int8" or not target.weight_symmetric:
        raise FcnquantError(f"target {target.name}: only int8 symmetric weights are emitted (weight_dtype "
                            f"{target.weight_dtype!r}, weight_symmetric {str(target.weight_symmetric).lower()})")
    if target.activation_dtype == "int16":
        raise FcnquantError(f"target {target.name}: int16 activations throughout are not emitted; declare int8 or "
                            "uint8 activations with \"int16\" in fallbacks")
    if per_channel and not target.per_channel_weights:
        raise FcnquantError(f"target {target.name} takes one weight scale per tensor: quantize with per-tensor "
                            "weights (--per-tensor)")
    if not per_channel and not target.per_tensor_weights:
        raise FcnquantError(f"target {target.name} takes one weight scale per output channel: drop --per-tensor")


def _load_table(table) -> tuple[object, str, str | None]:
    """Returns (table, label for messages, sha256 of its JSON file, or None for an in-memory table)."""
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise CalibrationError(f"calibration table not found: {path}")
        from fcnquant.calibrate.table import CalibrationTable

        return CalibrationTable.load(path), str(path), file_sha256(path)
    return table, "(in memory)", None


def _table_sha256(table) -> str:
    """Returns the sha256 of the JSON file ``table.save`` writes (what the table's file would hash to)."""
    with tempfile.TemporaryDirectory(prefix="fcnquant-t-") as tmp:
        path = Path(tmp) / "table.json"
        table.save(path)
        return file_sha256(path)


def _activation_params(
    model, plan, table, label: str, profile: Profile, quantize_output: bool, int16: set[str] = frozenset()
) -> dict[str, tuple[float, int]]:
    """Returns {tensor: (scale, zero point)} for every activation onnxruntime may quantize."""
    observed, inherited = list(plan.observed), plan.inherited
    read = {name for node in model.graph.node for name in node.input}
    outputs = {o.name for o in model.graph.output}
    # float logits need no scale unless something inside the graph reads them
    skippable = set() if quantize_output else {o for o in outputs if o not in read}
    required = [n for n in observed if n not in skippable]
    params = resolve_qparams(table, required, observed, profile, label)
    for name, src in inherited.items():
        if src in params:
            params.setdefault(name, params[src])
    if not profile.symmetric:
        _check_relu_zero_points(model, {k: v for k, v in params.items() if k not in int16}, profile)
    return params


def _all_activation_params(model, plan, table, label: str, profile: Profile, config: QuantConfig):
    """Returns ({tensor: (scale, zero point)} of every activation, those of the int16 ones, {Add/Concat input
    moved onto its sum's grid: the sum}) (``fcnquant.quantize.align``)."""
    activations = _activation_params(model, plan, table, label, profile, config.quantize_output,
                                     set(config.int16_tensors))
    int16 = _int16_params(activations, plan, table, config)
    activations.update(int16)
    moved: dict[str, str] = {}
    if align.applies(profile.target):  # a chip that rounds its Add alignment ties up
        moved = align.align_sum_inputs(model, activations, plan.inherited, skip=set(int16))
        log.debug("%d Add/Concat input(s) on the sum's grid: %s", len(moved), ", ".join(moved))
    return activations, int16, moved


def _int16_params(activations: dict[str, tuple[float, int]], plan, table,
                  config: QuantConfig) -> dict[str, tuple[float, int]]:
    """Returns {tensor: (scale, 0)} of the activations quantized to int16: ``config.int16_tensors`` and every
    tensor inheriting its scale from one of them (a MaxPool/Resize output, a producer fused with its Relu).

    Raises CalibrationError for a name that is no quantized activation of the graph."""
    from fcnquant.calibrate.qparams import qparams_bits

    wanted = set(config.int16_tensors)
    unknown = sorted(wanted - set(activations))
    if unknown:
        raise CalibrationError(f"int16 tensor(s) {', '.join(repr(n) for n in unknown[:8])} are no quantized "
                               "activation of the model")
    source = {n: plan.inherited.get(n, n) for n in activations}
    out: dict[str, tuple[float, int]] = {}
    for name in activations:
        src = source[name]
        if name in wanted or src in wanted:
            entry = table.tensors[src if src in table.tensors else name]
            out[name] = qparams_bits(float(entry.lo), float(entry.hi), config.target, 16)
    return out


#: the first opset whose QuantizeLinear / DequantizeLinear take int16
INT16_OPSET = 21


def to_opset(model, version: int) -> None:
    """Converts ``model`` in place to default-domain opset ``version`` (onnx's version converter, then the
    checker: every op must still validate there); ModelError when it cannot."""
    import onnx
    from onnx import version_converter

    from fcnquant.errors import ModelError

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is not None and current >= version:
        return
    try:
        converted = version_converter.convert_version(model, version)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter and checker raise assorted errors
        raise ModelError(f"the model cannot be converted to opset {version} (int16 activations need it): "
                         f"{exc}") from exc
    model.CopyFrom(converted)


def _with_inherited(table, plan):
    """Returns a copy of ``table`` that also lists each inherited tensor (MaxPool/Resize outputs, fused producers)
    under its source's entry, so TensorRT finds a dynamic range for every tensor of the float graph."""
    extra = {n: table.tensors[s] for n, s in plan.inherited.items() if s in table.tensors}
    full = copy.copy(table)
    full.tensors = {**extra, **table.tensors}
    return full


def _float_output_activations(model, quantize_output: bool) -> list[str]:
    """Returns the Relu/Clip nodes writing a float graph output: they must run in float, not fold into a Q."""
    if quantize_output:
        return []
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type in ("Relu", "Clip") and n.output[0] in outputs]


def _check_relu_zero_points(model, params: dict[str, tuple[float, int]], profile: Profile) -> None:
    """An asymmetric target folds each Relu into its output zero point, which must then be the type's minimum."""
    qmin, _ = profile.activation_qrange
    bad = [
        f"'{n.output[0]}' (zero point {params[n.output[0]][1]})"
        for n in model.graph.node
        if n.op_type == "Relu" and n.output[0] in params and params[n.output[0]][1] != qmin
    ]
    if bad:
        raise CalibrationError(
            f"Relu outputs must have zero point {qmin} for {profile.name} (their range starts at 0): {', '.join(bad[:8])}"
        )


def _weight_overrides(model, profile: Profile, per_channel: bool, excluded: set[str], pow2_rounding: str) -> dict:
    """Returns {weight: (scales, axis)} where onnxruntime's own weight scales would be wrong for the target.

    Power-of-two targets get every weight's scales; a grouped ConvTranspose gets one per-tensor scale (its
    axis 1 holds output channels of one group only, which a per-channel bias cannot follow).
    """
    scales = weight_scales_for(model, profile.target, per_channel, pow2_rounding, skip_nodes=excluded)
    if profile.pow2:
        return scales
    grouped = {n.input[1] for n in model.graph.node
               if n.op_type == "ConvTranspose" and len(n.input) > 1
               and next((a.i for a in n.attribute if a.name == "group"), 1) != 1}
    return {k: v for k, v in scales.items() if k in grouped}


def _int8_capable(model, activations: set[str]) -> list:
    """Returns the nodes of an int8-capable op type that compute an activation (not shape arithmetic)."""
    return [n for n in model.graph.node if n.op_type in INT8_OPS and any(o in activations for o in n.output)]


def _float_nodes(model, capable: list) -> list[str]:
    """Returns the names of the ``capable`` nodes whose inputs (weights included) do not all come from a
    DequantizeLinear."""
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return [
        n.name for n in capable
        if any(x and made_by.get(x) != "DequantizeLinear" for x in list(n.input)[INT8_OPS[n.op_type]])
    ]


def _drop_metadata(model, key: str) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in keep:
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v


def _save(model, path: Path) -> None:
    import onnx

    onnx.save_model(model, str(path))
