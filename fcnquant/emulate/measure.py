"""Scoring the emulated model on a split and measuring its disagreement with onnxruntime's QDQ simulation.

One pass (:func:`emulate_shard`, merged exactly by :func:`merge_shards`): per image batch, the emulator and
onnxruntime (the model with every integer tensor the emulator computes exposed as an output; exposing
QuantizeLinear outputs keeps its fused integer kernels) run on the same input; both predictions go into their
confusion matrices, the pixels whose class differs are counted, and for every integer tensor the largest
difference in LSBs and the number of differing values are kept.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fcnquant.data import VOC_CLASSES, DataConfig, Dataset
from fcnquant.emulate.interpret import run_program
from fcnquant.emulate.program import IntProgram, build_program
from fcnquant.emulate.target import Arithmetic, arithmetic_of, model_target
from fcnquant.evaluate import EvalResult, output_to_classes, result_from_confusion
from fcnquant.execute import Executor, RunConfig, ShardContext, image_batches, resolve_batch
from fcnquant.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDiff:
    """One integer tensor: emulator minus onnxruntime, in LSBs."""

    name: str  # the step's core node
    op: str
    tensor: str  # the QuantizeLinear output
    max_lsb: int
    differing: int  # values that differ
    values: int  # values compared

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"name": self.name, "op": self.op, "tensor": self.tensor, "max_lsb": self.max_lsb,
                "differing": self.differing, "values": self.values}


@dataclass
class EmulateShard:
    """A shard's counts; ``merge_shards`` adds them (maxima for the largest differences), exactly."""

    emulated: np.ndarray  # confusion matrix of the emulated predictions
    simulated: np.ndarray  # confusion matrix of onnxruntime's
    differing_pixels: int = 0
    pixels: int = 0
    max_lsb: dict[str, int] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    overflows: dict[str, int] = field(default_factory=dict)
    preset: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EmulationReport:
    """The emulated model's scores, onnxruntime's on the same images, and where the two differ."""

    model: str
    arithmetic: dict  # Arithmetic.to_dict()
    images: int
    emulated: EvalResult
    simulated_miou: float
    differing_pixels: int
    pixels: int
    layers: tuple[LayerDiff, ...]
    overflows: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def disagreement(self) -> float:
        """Returns the percentage of pixels whose class differs between the emulator and onnxruntime."""
        return 100.0 * self.differing_pixels / self.pixels if self.pixels else math.nan

    @property
    def miou_gap(self) -> float:
        """Returns emulated mIoU - onnxruntime's mIoU in points."""
        return self.emulated.miou - self.simulated_miou

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (NaN written as null)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 4)

        emu = self.emulated.to_dict()
        return {
            "model": self.model, "arithmetic": self.arithmetic, "images": self.images,
            "seconds": round(self.seconds, 3),
            "miou_emulated": num(self.emulated.miou), "miou_simulated": num(self.simulated_miou),
            "miou_gap": num(self.miou_gap), "pixel_acc_emulated": num(self.emulated.pixel_acc),
            "per_class_iou_emulated": emu["per_class_iou"],
            "class_disagreement_percent": num(self.disagreement), "differing_pixels": self.differing_pixels,
            "pixels": self.pixels, "layers": [x.to_dict() for x in self.layers],
            "accumulator_overflows": dict(self.overflows),
        }

    def format_text(self, layers: int | None = None) -> str:
        """Returns the terminal summary (:func:`format_emulation` of ``to_dict()``)."""
        return format_emulation(self.to_dict(), layers)


def format_emulation(d: dict, layers: int | None = None) -> str:
    """Returns the terminal summary of an ``EmulationReport.to_dict()``: both mIoUs, the class disagreement, then
    the first ``layers`` integer tensors that differ from onnxruntime's (all when None)."""
    a = d["arithmetic"]

    def num(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [
        f"emulated integer arithmetic: target {a['target']}, rounding {a['rounding']}, "
        f"{a['accumulator_bits']}-bit accumulator, resize coefficients {a['resize_bits']} fraction bits",
        f"  mIoU emulated {num(d['miou_emulated'])}, onnxruntime's simulation {num(d['miou_simulated'])} "
        f"(gap {num(d['miou_gap'], '+.3f')}) on {d['images']} images",
        f"  pixels whose class differs: {num(d['class_disagreement_percent'], '.3f')} % ({d['differing_pixels']} "
        f"of {d['pixels']})",
    ]
    differ = [x for x in d["layers"] if x["max_lsb"]]
    lines.append(f"  integer tensors that differ from onnxruntime's: {len(differ)} of {len(d['layers'])}")
    for x in differ[:layers]:
        lines.append(f"    {x['name']:<40} {x['op']:<13} max {x['max_lsb']:>3} LSB, "
                     f"{100.0 * x['differing'] / max(x['values'], 1):.4f} % of values")
    if d.get("accumulator_overflows"):
        lines.append(f"  accumulator overflows (wrapped): {d['accumulator_overflows']}")
    return "\n".join(lines)


def emulate_shard(ctx: ShardContext, data: DataConfig, batch_size: int, arithmetic: Arithmetic,
                  num_classes: int) -> EmulateShard:
    """Returns the EmulateShard of the model ``"model"`` (a QDQ path or bytes) on the shard's images."""
    import onnx

    from fcnquant.runtime import input_spec, make_session, outputs_patch

    raw = ctx.model_bytes("model")
    model = onnx.load_from_string(raw)
    prog = build_program(model)
    layers = prog.layers()
    session = make_session(raw + outputs_patch(model, [s.output for s in layers]), threads=ctx.threads,
                           providers=ctx.providers, spinning=False)
    _, shape = input_spec(session)
    pre = data.preset_for(session)
    batch_size, fixed_batch = resolve_batch(batch_size, shape[0])
    out_names = [o.name for o in session.get_outputs()]
    shard = EmulateShard(np.zeros((num_classes,) * 2, np.int64), np.zeros((num_classes,) * 2, np.int64),
                         preset=pre.to_dict())
    for mb in image_batches(ctx.dataset, pre, ctx.ids, batch_size, fixed_batch):
        ref = dict(zip(out_names, session.run(None, {prog.input_name: mb.feed})))
        emu = run_program(prog, mb.feed, arithmetic)
        _count(shard, prog, emu, ref, mb, num_classes)
        ctx.advance(mb.n)
    return shard


def _count(shard: EmulateShard, prog: IntProgram, emu, ref: dict, mb, num_classes: int) -> None:
    """Adds one batch's predictions and differences to ``shard``."""
    hw = mb.masks.shape[1:]
    pe = output_to_classes(np.asarray(emu.outputs[0], np.float32)[:mb.n], hw, num_classes)
    pr = output_to_classes(np.asarray(ref[prog.outputs[0]])[:mb.n], hw, num_classes)
    for cm, pred in ((shard.emulated, pe), (shard.simulated, pr)):
        m = ConfusionMatrix(num_classes)
        m.update(pred, mb.masks)
        cm += m.matrix
    shard.differing_pixels += int((pe != pr).sum())
    shard.pixels += int(pe.size)
    for s in prog.layers():
        d = np.abs(emu.values[s.output][:mb.n].astype(np.int32) - ref[s.output][:mb.n].astype(np.int32))
        shard.max_lsb[s.output] = max(shard.max_lsb.get(s.output, 0), int(d.max(initial=0)))
        shard.differing[s.output] = shard.differing.get(s.output, 0) + int(np.count_nonzero(d))
        shard.values[s.output] = shard.values.get(s.output, 0) + int(d.size)
    for k, v in emu.overflows.items():
        shard.overflows[k] = shard.overflows.get(k, 0) + v


def merge_shards(parts: list[EmulateShard]) -> EmulateShard:
    """Returns the exact merge of shard results (sums; maxima for the largest differences)."""
    out = EmulateShard(parts[0].emulated * 0, parts[0].simulated * 0, preset=parts[0].preset)
    for p in parts:
        out.emulated += p.emulated
        out.simulated += p.simulated
        out.differing_pixels += p.differing_pixels
        out.pixels += p.pixels
        for k, v in p.max_lsb.items():
            out.max_lsb[k] = max(out.max_lsb.get(k, 0), v)
        for mine, theirs in ((out.differing, p.differing), (out.values, p.values), (out.overflows, p.overflows)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
    return out


def resolve_arithmetic(model, target=None) -> Arithmetic:
    """Returns the Arithmetic for ``model`` (ModelProto): ``target`` (a name or Target), else the one recorded in
    its metadata, else npu-pow2's."""
    return arithmetic_of(target if target is not None else model_target(model))


def emulate_eval(model: str | os.PathLike[str] | bytes, data: DataConfig | Dataset | str | None = None,
                 run: RunConfig | Executor | None = None, target=None,
                 arithmetic: Arithmetic | None = None) -> EmulationReport:
    """Returns the EmulationReport of the QDQ ``model`` (path or bytes) on a labelled split.

    ``data`` and ``run`` as in :func:`fcnquant.evaluate.evaluate`; ``target``: the target whose arithmetic is
    emulated (a name or Target; default: the model's ``fcnquant.target`` metadata, else npu-pow2);
    ``arithmetic`` overrides it whole. Raises ModelError for a graph the emulator cannot run in integers.
    """
    import onnx

    from fcnquant._io import load_onnx
    from fcnquant.errors import DataError

    cfg, run = DataConfig.of(data), RunConfig.of(run)
    executor = run.resolved()
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else load_onnx(model)
    build_program(proto)  # unsupported graphs fail here, before any image is read
    arithmetic = arithmetic or resolve_arithmetic(proto, target)
    del proto
    dataset = cfg.open(model, progress=executor.progress)
    if not dataset.has_labels:
        raise DataError(f"emulation scores need segmentation masks; dataset {dataset.describe()} has none")
    chosen = cfg.take(dataset)
    start = time.perf_counter()
    merged = merge_shards(executor.map(emulate_shard, dataset, chosen, models={"model": model}, desc="emulate",
                                       args=(cfg, run.batch_size, arithmetic, len(VOC_CLASSES))))
    seconds = time.perf_counter() - start
    name = "<bytes>" if isinstance(model, bytes) else str(model)
    emu_cm, sim_cm = ConfusionMatrix(len(VOC_CLASSES)), ConfusionMatrix(len(VOC_CLASSES))
    emu_cm.matrix += merged.emulated
    sim_cm.matrix += merged.simulated
    emulated = result_from_confusion(emu_cm, len(chosen), seconds, model=name, data=str(dataset.root),
                                     split=dataset.split, preset=merged.preset)
    return EmulationReport(
        model=name, arithmetic=arithmetic.to_dict(), images=len(chosen), emulated=emulated,
        simulated_miou=sim_cm.miou(), differing_pixels=merged.differing_pixels, pixels=merged.pixels,
        layers=_layer_diffs(model, merged), overflows=dict(merged.overflows), seconds=seconds,
    )


def _layer_diffs(model, merged: EmulateShard) -> tuple[LayerDiff, ...]:
    import onnx

    from fcnquant._io import load_onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else load_onnx(model)
    return tuple(LayerDiff(s.name, s.op + ("+Relu" if s.relu else ""), s.output, merged.max_lsb.get(s.output, 0),
                           merged.differing.get(s.output, 0), merged.values.get(s.output, 0))
                 for s in build_program(proto).layers())
