"""NNCF's ``quantize_with_accuracy_control`` on the demo fcn8s, beside ``fcnquant tune`` (bench_tune.py).

Same budget (0.05 mIoU points, absolute), same images: the 50 calibration and 200 tuning images
``fcnquant.tune.choose_images`` picks from the built-in train split (NNCF validates on the tuning images), and
the >= 1000 held-out images (``--heldout``) for the final drop. NNCF has no power-of-two scales; it runs with
symmetric int8 (preset PERFORMANCE), per-tensor weights, target CPU. Counted: every call of the validation
function (NNCF's own evaluations, ranking ones included, with the number of images each), wall time, the layers
left in float in NNCF's result, the tuning and held-out drops (sessions opened as fcnquant opens them).

Run in NNCF's own venv, with this checkout on the path (torch is not needed)::

    PYTHONPATH=. /work/venvs/nncf/bin/python bench/bench_tune_nncf.py --heldout /tmp/fq/val1k
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

MAX_DROP = 0.05


def _shim_tqdm() -> None:
    """NNCF's venv has no tqdm; fcnquant only needs it for progress bars, which stay off here."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        mod = types.ModuleType("tqdm")

        class _Bar:
            def __init__(self, *a, **k): pass
            def __enter__(self): return self
            def __exit__(self, *a): return False
            def update(self, *a): pass
            def set_postfix(self, *a, **k): pass
            def __iter__(self): return iter(())
        mod.tqdm = _Bar
        sys.modules["tqdm"] = mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", type=Path, default=Path("/tmp/fq/val1k"))
    p.add_argument("--model", default="fcn8s")
    p.add_argument("--out", type=Path, default=Path("/tmp/fq/bench-tune"))
    args = p.parse_args(argv)
    _shim_tqdm()
    import numpy as np
    import onnx
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    from fcnquant.data import VOC_CLASSES, builtin_dataset, iter_batches, open_dataset, preset_for_session
    from fcnquant.demo_models import demo_model_path
    from fcnquant.evaluate import output_to_classes
    from fcnquant.metrics import ConfusionMatrix
    from fcnquant.runtime import make_session
    from fcnquant.tune import choose_images
    from fcnquant.tune.tuning_set import TuningSet

    model_path = demo_model_path(args.model)
    root = builtin_dataset(progress=False)
    images = choose_images(root)
    preset = preset_for_session(make_session(model_path), None)
    train = open_dataset(root, "train")
    calib = [b.images for b in iter_batches(train, preset, list(images.calibration.ids), 1)]
    tuning = [(b.images, b.masks) for b in iter_batches(train, preset, list(images.tuning.ids), 1)]
    calls: list[dict] = []

    def validate(model, data) -> tuple[float, None]:
        t = time.perf_counter()
        sess = make_session(model.SerializeToString())
        cm = ConfusionMatrix(len(VOC_CLASSES))
        n = 0
        for x, m in data:
            out = np.asarray(sess.run(None, {"input": x})[0])
            cm.update(output_to_classes(out, m.shape[1:], len(VOC_CLASSES)), m)
            n += 1
        calls.append({"images": n, "seconds": round(time.perf_counter() - t, 2), "miou": cm.miou()})
        return cm.miou(), None

    fp = onnx.load(str(model_path))
    t0 = time.perf_counter()
    q = nncf.quantize_with_accuracy_control(
        fp, nncf.Dataset(calib, lambda x: {"input": x}), nncf.Dataset(tuning), validate, max_drop=MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU, subset_size=len(calib),
        advanced_quantization_parameters=AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False)))
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.model}.nncf.onnx"
    onnx.save(q, str(out))

    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    float_convs = [n.name for n in q.graph.node if n.op_type in ("Conv", "Add")
                   and any(x and made_by.get(x) != "DequantizeLinear" and x not in {i.name for i in q.graph.initializer}
                           for x in n.input[:1])]
    weight_float = [n.name for n in q.graph.node if n.op_type == "Conv" and made_by.get(n.input[1]) != "DequantizeLinear"]
    val = open_dataset(args.heldout, "val")
    held = TuningSet(val, val.ids, preset, cache_bytes=0)
    held.set_float(model_path)
    ts = TuningSet(train, images.tuning.ids, preset)
    ts.set_float(model_path)
    row = {"model": args.model, "tool": f"nncf {nncf.__version__} quantize_with_accuracy_control",
           "validation_calls": len(calls), "calls": calls, "wall_s": round(wall, 1),
           "float_convs_weights": weight_float, "float_input_nodes": float_convs,
           "tune_drop": ts.drop(out), "heldout_drop": held.drop(out), "heldout_images": len(val.ids),
           "load": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    (args.out / f"{args.model}.nncf.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
