"""Rebuilding the shipped demo models: train each with ``fcnquant.models.train``, score it, write the manifest.

``python -m fcnquant.models.make_demo [--models fcn8s ...] [--record-only] [--work DIR]``

1. Training data: ``write_synthetic_voc(WORK/train-data, **TRAIN_DATA)``, i.e. the built-in synthetic VOC's
   train split (seed 0, 192 px) extended to more images; its val split is empty. The built-in val split is never
   trained on (scenes depend on (seed, split, index), so train and val images differ).
2. Each model in ``RECIPES`` is trained by ``python -m fcnquant.models.train`` with the recipe's arguments and
   exported to ``fcnquant/assets/demo/<name>.onnx`` (static 1x3x160x160, preset in the ONNX metadata).
3. Each shipped file is scored with ``fcnquant.evaluate.evaluate`` (what ``fcnquant eval MODEL`` runs) on the
   built-in val split (the recorded numbers) and on a val split generated with seed ``OTHER_SEED``; the
   manifest ``demo_models.json`` records those scores, the file's sha256, the recipe, command and training time.
   ``--record-only`` rescores the shipped files without training (keeping the recorded training facts).
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

from fcnquant._io import atomic_write_text, file_sha256
from fcnquant.data.synth import BUILTIN_PARAMS, SYNTH_VERSION
from fcnquant.demo_models import DEMO_DIR, DEMO_MODELS, MANIFEST

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRAIN_DATA = {"train": 3000, "val": 0, "size": BUILTIN_PARAMS["size"], "seed": BUILTIN_PARAMS["seed"]}
OTHER_SEED = 1
#: per model: the arguments of ``python -m fcnquant.models.train`` besides the model, data and output paths;
#: ``{work}`` is the work folder (each model's checkpoint is kept there as ``<name>.pth``). As in the FCN paper's
#: staged training, FCN-16s and FCN-32s start from the trained FCN-8s (same VGG backbone and head): build fcn8s
#: first. (FCN-32s trained from scratch at 320 reached only 18.6 mIoU in 9 epochs.)
#: FCN-32s takes 320x320 inputs (a common deployment size): at 160 its stride-32 output is a 5x5 grid, and even the
#: ground truth averaged over 32x32 blocks and upsampled like its logits scores only 54.7 mIoU on the val split
#: (77.2 at 320; FCN-16s at 160: 77.6).
_COMMON = ["--crop", "128", "--batch-size", "8", "--threads", "1", "--seed", "0"]
RECIPES: dict[str, list[str]] = {
    "fcn8s": ["--width", "0.1875", "--size", "160", "--epochs", "9", "--lr", "0.002", *_COMMON],
    "fcn16s": ["--width", "0.1875", "--size", "160", "--epochs", "4", "--lr", "0.0005", "--train-bn", "off",
               "--init-from", "{work}/fcn8s.pth", *_COMMON],
    "fcn32s": ["--width", "0.1875", "--size", "320", "--epochs", "18", "--lr", "0.0005", "--train-bn", "off",
               "--init-from", "{work}/fcn8s.pth", "--crop", "160", "--scale", "0.5", "1.25", *_COMMON[2:]],
    "fcn_r50_d8": ["--width", "0.125", "--size", "160", "--epochs", "14", "--lr", "0.003", *_COMMON],
}


def _scores(result) -> dict:
    return {"miou": round(result.miou, 4), "miou_awesome": round(result.miou_awesome, 4),
            "pixel_acc": round(result.pixel_acc, 4), "images": result.images,
            "per_class_iou": {k: (None if v != v else round(v, 2)) for k, v in result.per_class_iou.items()}}


def train_model(name: str, train_data: Path, val_data: Path, work: Path) -> dict:
    """Returns the training facts of ``name`` after training it into ``DEMO_DIR`` with its recipe."""
    from .train import main as train_main

    out = DEMO_DIR / f"{name}.onnx"
    report = work / f"{name}.train.json"
    recipe = [a.format(work=work) for a in RECIPES[name]]
    argv = [name, "--data", str(train_data), "--val-data", str(val_data), "--out", str(out),
            "--checkpoint-out", str(work / f"{name}.pth"), "--json", str(report), *recipe]
    start = time.perf_counter()
    rc = train_main(argv + ["--no-progress"] if not sys.stderr.isatty() else argv)
    if rc != 0:
        raise SystemExit(f"training {name} failed (exit status {rc})")
    wall = time.perf_counter() - start
    result = json.loads(report.read_text())
    # paths shown as WORK (--work), BUILTIN_VOC (fcnquant.data.builtin_dataset()) and the repository path
    shown = ["WORK/train-data" if a == str(train_data) else "BUILTIN_VOC" if a == str(val_data) else
             f"fcnquant/assets/demo/{name}.onnx" if a == str(out) else a.replace(str(work), "WORK")
             for a in argv if a not in (str(report), "--json")]
    return {
        "command": "python -m fcnquant.models.train " + shlex.join(shown),
        "train_data": f"fcnquant synth-voc WORK/train-data --train {TRAIN_DATA['train']} --val {TRAIN_DATA['val']} "
                      f"--size {TRAIN_DATA['size']} --seed {TRAIN_DATA['seed']}",
        "config": result["config"],
        "train_seconds": result["result"]["seconds"],
        "wall_seconds": round(wall, 1),
        "final_loss": result["result"]["final_loss"],
        "steps": result["result"]["steps"],
        "train_images": result["result"]["train_images"],
        "torch": _torch_version(),
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def record(names, trained: dict[str, dict], val_data: Path, other_val: Path) -> dict:
    """Returns the manifest with ``names`` rescored (other entries kept from the existing manifest)."""
    import onnx

    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    models = manifest.get("models", {})
    for name in names:
        path = DEMO_DIR / f"{name}.onnx"
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        from .zoo import build_model, count_parameters

        width = float(meta["fcnquant.width"])
        log.info("scoring %s", path)
        fp32 = evaluate(path, val_data, RunConfig(progress=False))
        other = evaluate(path, other_val, RunConfig(progress=False))
        old = models.get(name, {})
        models[name] = {
            "file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "preset": meta["fcnquant.preset"], "input_size": dims[2:], "width": width,
            "params": count_parameters(build_model(name, width=width)),
            "fp32": _scores(fp32),
            "other_seed": {"seed": OTHER_SEED, **_scores(other)},
            "training": trained.get(name, old.get("training")),
        }
    ordered = {n: models[n] for n in DEMO_MODELS if n in models}
    return {
        "format_version": FORMAT_VERSION,
        "note": "fp32 scores are fcnquant.evaluate.evaluate (what `fcnquant eval MODEL` prints, percent); miou uses "
                "mmseg semantics, miou_awesome counts empty classes as 0. 'fp32' is the built-in synthetic val "
                "split (dataset below); 'other_seed' a val split of the same size generated with that seed. "
                "Training times are wall-clock seconds on a 2-core x86 VM shared with other jobs (1 torch thread "
                "per run); fcn16s and fcn32s start from the trained fcn8s checkpoint (add its time for their total).",
        "dataset": {"generator": "fcnquant.data.synth", "version": SYNTH_VERSION, **BUILTIN_PARAMS, "split": "val"},
        "models": ordered,
    }


def main(argv: list[str] | None = None) -> int:
    """Trains (unless --record-only) and scores the demo models, then writes the manifest."""
    from fcnquant.data import builtin_dataset, write_synthetic_voc

    p = argparse.ArgumentParser(prog="python -m fcnquant.models.make_demo", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=DEMO_MODELS, default=list(DEMO_MODELS), help="models to build")
    p.add_argument("--record-only", action="store_true", help="only rescore the shipped files")
    p.add_argument("--work", help="folder for the training data and logs (default: a temporary folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="fcnquant-demo-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        val_data = builtin_dataset(progress=False)
        other_val = work / f"val-seed{OTHER_SEED}"
        if not (other_val / "VOC2012").is_dir():
            write_synthetic_voc(other_val, train=0, val=BUILTIN_PARAMS["val"], size=BUILTIN_PARAMS["size"],
                                seed=OTHER_SEED, progress=False)
        trained: dict[str, dict] = {}
        if not args.record_only:
            train_data = work / "train-data"
            if not (train_data / "VOC2012").is_dir():
                write_synthetic_voc(train_data, **TRAIN_DATA, progress=False)
            for name in args.models:
                trained[name] = train_model(name, train_data, val_data, work)
        manifest = record(args.models, trained, val_data, other_val)
    atomic_write_text(MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for name, entry in manifest["models"].items():
        print(f"{name:<12} {entry['bytes'] / 1e6:5.2f} MB  mIoU {entry['fp32']['miou']:6.2f} "
              f"(seed {OTHER_SEED}: {entry['other_seed']['miou']:6.2f})")
    print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
