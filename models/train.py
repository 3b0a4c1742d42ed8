"""Training a zoo FCN (usually at reduced width) on a VOC-layout folder on the CPU, then exporting it to ONNX.

``python -m fcnquant.models.train MODEL --data DIR --width W --size S --epochs E --out model.onnx`` trains
``build_model(MODEL, width=W)`` on the ``train`` split and writes:

- ``model.onnx``: static (1, 3, S, S) input (``--dynamic-batch`` names the batch ``N``), exported by
  ``export_module`` with ``metadata_props`` ``fcnquant.preset`` (so ``fcnquant eval`` / ``calibrate`` pick the
  preprocessing the model was trained with), ``fcnquant.model``, ``fcnquant.width``, ``fcnquant.weights``;
- optionally ``--checkpoint-out ckpt.pth``: ``{"state_dict": ..., "meta": {...}}`` of plain tensors/strings,
  readable by ``fcnquant.models.load_checkpoint`` (``weights_only=True``) into ``build_model(MODEL, width=W)``.

Training recipe (one function each, below):

1. Every training image and mask is decoded once into memory (uint8).
2. Augmentation per sample (``augment``): the preset's own geometry (``awesome``: short side to S; ``mmseg``: the
   whole image to S x S) times a random scale in ``scale_range``, a random ``crop`` x ``crop`` window (padding
   with the mean colour / void 255 where the scaled image is smaller), a random horizontal flip, then the
   preset's normalisation. The validation split goes through the preset's exact evaluation transform.
3. Cross-entropy ignoring 255, AdamW (or SGD with momentum 0.9), linear warm-up then cosine (or poly 0.9) decay,
   gradient-norm clipping.
4. ResNet models start with the last BN of every residual branch at zero (``zero_init_residual``), and
   ``init_from`` can start a model from a related trained one (the FCN paper's staged training).
5. ``train_bn`` (default for the VGG family): each backbone convolution gets a BatchNorm during training only; at
   the end every such BN is folded into its convolution (exact in eval mode), so the saved weights are those of
   the plain zoo model. (Plain deep VGG is hard to train from scratch; its authors initialised the deep nets
   from shallower trained ones. With per-layer BN it trains directly at a high learning rate.)
6. Seeded: torch's RNG, a numpy ``Generator`` for augmentation and batch order; with a fixed thread count a rerun
   on the same machine reproduces the same weights.

The exported ONNX model is scored with ``fcnquant.evaluate.evaluate`` on the ``val`` split (the numbers
``fcnquant eval`` prints).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnquant._io import atomic_path
from fcnquant.errors import FcnquantError

from .export import export_module
from .zoo import build_model, count_parameters, get_spec

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the data, and the machine's float arithmetic)."""

    model: str
    width: float = 0.125
    size: int = 160  # exported input side; validation uses the preset at this size
    crop: int | None = None  # training crop side; None = size
    epochs: int = 30
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    scale_range: tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    train_bn: bool | None = None  # None: True for the VGG family
    preset: str | None = None  # None: the model's preset (awesome / mmseg)
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 21
    max_train_images: int | None = None
    seed: int = 0
    threads: int = 2
    clip_grad: float = 5.0
    channels_last: bool = True  # NHWC activations: ~10-15% faster convolutions on the CPU
    init_from: str | None = None  # checkpoint whose same-named, same-shaped tensors initialise the model
    zero_init_residual: bool = True  # ResNet: last BN of each residual branch starts at 0 (faster from scratch)

    def __post_init__(self) -> None:
        get_spec(self.model)
        if self.optimizer not in OPTIMIZERS:
            raise FcnquantError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
        if self.schedule not in SCHEDULES:
            raise FcnquantError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise FcnquantError("epochs, batch size and threads must be at least 1, got "
                                f"{self.epochs}, {self.batch_size}, {self.threads}")
        if self.size < 32 or (self.crop is not None and self.crop < 32):
            raise FcnquantError(f"size and crop must be at least 32 pixels, got {self.size} and {self.crop}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise FcnquantError(f"scale range must satisfy 0 < low <= high, got {self.scale_range}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise FcnquantError(f"lr must be positive and weight decay non-negative, got {self.lr}, "
                                f"{self.weight_decay}")

    @property
    def preset_name(self) -> str:
        """Returns the preprocessing preset name (the model's own unless overridden)."""
        return self.preset or get_spec(self.model).preset

    @property
    def crop_size(self) -> int:
        """Returns the training crop side."""
        return self.crop or self.size

    @property
    def uses_train_bn(self) -> bool:
        """Whether backbone convolutions get train-time BatchNorm (folded away at the end)."""
        return get_spec(self.model).family == "vgg" if self.train_bn is None else self.train_bn


@dataclass
class TrainResult:
    """What a run produced: files, sizes, times and the exported model's validation scores (percent)."""

    onnx: str
    checkpoint: str | None
    params: int
    seconds: float
    epochs: int
    steps: int
    train_images: int
    final_loss: float
    miou: float
    miou_awesome: float
    pixel_acc: float
    val_images: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------- data


def load_split(root: str | os.PathLike[str], split: str, limit: int | None = None,
               progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns the decoded (HxWx3 uint8 image, HxW uint8 mask) pairs of a labelled split, in id order."""
    from tqdm import tqdm

    from fcnquant.data import open_dataset
    from fcnquant.errors import DataError

    dataset = open_dataset(root, split)
    if not dataset.has_labels:
        raise DataError(f"training needs segmentation masks; dataset {dataset.describe()} has none")
    ids = dataset.ids[:limit] if limit else dataset.ids
    if not ids:
        raise DataError(f"split '{split}' of {dataset.describe()} is empty")
    return [dataset.load_pair(i) for i in tqdm(ids, desc=f"load {split}", unit="img", disable=not progress)]


def augment(image: np.ndarray, mask: np.ndarray, preset, crop: int, scale_range: tuple[float, float],
            flip: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns one augmented (3 x crop x crop float32 normalised image, crop x crop uint8 mask) training sample.

    The image is resized by the preset's evaluation geometry for ``preset.size`` (short side to S, or the whole
    image to H x W for fixed presets) times ``uniform(*scale_range)``; image bilinear, mask nearest. A random
    ``crop`` window is cut (the image padded with the preset mean, the mask with 255 where it is smaller), then
    flipped left-right with probability 0.5 when ``flip``.
    """
    from PIL import Image

    h, w = mask.shape
    th, tw = preset.size
    if preset.mode == "fixed":
        fy, fx = th / h, tw / w
    else:
        fy = fx = min(th, tw) / min(h, w)
    s = rng.uniform(*scale_range)
    nh, nw = max(1, int(round(h * fy * s))), max(1, int(round(w * fx * s)))
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.Resampling.NEAREST))
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        fill = np.round(np.asarray(preset.mean) / preset.pixel_scale).clip(0, 255).astype(np.uint8)
        canvas = np.empty((nh + ph, nw + pw, 3), np.uint8)
        canvas[:] = fill
        canvas[:nh, :nw] = img
        mcanvas = np.full((nh + ph, nw + pw), IGNORE_INDEX, np.uint8)
        mcanvas[:nh, :nw] = msk
        img, msk = canvas, mcanvas
    y0 = int(rng.integers(0, img.shape[0] - crop + 1))
    x0 = int(rng.integers(0, img.shape[1] - crop + 1))
    img, msk = img[y0:y0 + crop, x0:x0 + crop], msk[y0:y0 + crop, x0:x0 + crop]
    if flip and rng.random() < 0.5:
        img, msk = img[:, ::-1], msk[:, ::-1]
    return preset.normalize(np.ascontiguousarray(img)), np.ascontiguousarray(msk)


# ------------------------------------------------------------------------------------- train-time BN


class _ConvBN(nn.Module):
    """A convolution followed by a BatchNorm used only during training (``fold_train_bn`` removes it)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _containers(model: nn.Module) -> list[nn.Sequential]:
    return [m for m in model.modules() if isinstance(m, nn.Sequential)]


def attach_train_bn(model: nn.Module) -> list[_ConvBN]:
    """Returns the wrappers inserted after every Conv2d of the VGG backbone that has no BatchNorm after it.

    A convolution shared by several containers (awesome's ``pool3/4/5`` views of ``pretrained``) is wrapped once
    and replaced in all of them.
    """
    backbone = getattr(model, "pretrained", None)
    if not isinstance(backbone, nn.Sequential):
        raise FcnquantError(f"train-time BN needs a VGG backbone ('pretrained'); {type(model).__name__} has none")
    wrappers: dict[int, _ConvBN] = {}
    for i, m in enumerate(backbone):
        following = backbone[i + 1] if i + 1 < len(backbone) else None
        if isinstance(m, nn.Conv2d) and not isinstance(following, nn.BatchNorm2d):
            wrappers[id(m)] = _ConvBN(m)
    for seq in _containers(model):
        for j, m in enumerate(seq):
            if id(m) in wrappers:
                seq[j] = wrappers[id(m)]
    return list(wrappers.values())


@torch.no_grad()
def fold_train_bn(model: nn.Module, wrappers: Sequence[_ConvBN]) -> None:
    """Folds each wrapper's BN (running statistics) into its conv and puts the bare conv back in place."""
    by_id = {id(w): w for w in wrappers}
    for w in wrappers:
        conv, bn = w.conv, w.bn
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + bn.bias
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
    for seq in _containers(model):
        for j, m in enumerate(seq):
            if id(m) in by_id:
                seq[j] = by_id[id(m)].conv


# -------------------------------------------------------------------------------------------- training


def _zero_init_residual(model: nn.Module) -> None:
    from .resnet_d8 import Bottleneck

    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)  # each block starts as its shortcut (Goyal et al. 2017)


def init_from_checkpoint(model: nn.Module, checkpoint: str | os.PathLike[str]) -> list[str]:
    """Returns the keys of ``model``'s state dict copied from ``checkpoint`` (same name and shape).

    This is the FCN paper's staged training (FCN-16s initialised from FCN-32s, ...): a related model's backbone
    and head start the new one; the remaining tensors keep their fresh initialisation. A checkpoint sharing no
    tensor with the model is an error.
    """
    from .checkpoint import adapt_state_dict, read_state_dict

    state = adapt_state_dict(model, read_state_dict(checkpoint))
    own = model.state_dict()
    # only each tensor's first name: awesome's pool3/4/5 views index the backbone differently per model
    # (fcn8s 'pool4.0' is 'pretrained.17', fcn16s 'pool4.0' is 'pretrained.0'), so alias names must not be used
    canonical: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        canonical.setdefault(id(tensor), key)
    names = list(canonical.values())
    copied = {k: v for k, v in state.items() if k in names and tuple(v.shape) == tuple(own[k].shape)}
    if not copied:
        raise FcnquantError(f"checkpoint {checkpoint} shares no tensor (same name and shape) with "
                            f"{type(model).__name__}")
    model.load_state_dict(copied, strict=False)
    fresh = [k for k in names if k not in copied and not k.endswith("num_batches_tracked")]
    log.info("initialised %d of %d tensors from %s; fresh: %s", len(copied), len(names), checkpoint,
             ", ".join(fresh) if fresh else "none")
    return sorted(copied)



def _lr_factor(config: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    t = (step - warm) / max(1, total - warm)
    if config.schedule == "poly":
        return max(0.0, 1.0 - t) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and BN
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.lr)


@torch.no_grad()
def evaluate_torch(model: nn.Module, samples: Sequence[tuple[np.ndarray, np.ndarray]], preset,
                   batch_size: int = 8, num_classes: int = 21) -> dict:
    """Returns {"miou", "miou_awesome", "pixel_acc"} (percent) of a torch model on decoded samples."""
    from fcnquant.metrics import ConfusionMatrix

    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for i in range(0, len(samples), batch_size):
        pairs = [preset.transform(img, msk) for img, msk in samples[i:i + batch_size]]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        cm.update(model(x).argmax(1).numpy(), np.stack([p[1] for p in pairs]))
    model.train(was_training)
    return {"miou": cm.miou(), "miou_awesome": cm.miou_awesome(), "pixel_acc": cm.pixel_accuracy() * 100}


def train(
    config: TrainConfig,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    checkpoint_out: str | os.PathLike[str] | None = None,
    dynamic_batch: bool = False,
    eval_every: int = 0,
    val_data: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Returns the ``TrainResult`` of training ``config.model`` on ``data`` and exporting it to ``out`` (ONNX).

    ``val_data`` (default ``data``) provides the ``config.val_split`` on which the exported model is scored;
    ``eval_every`` > 0 also scores the torch model every that many epochs (logged, kept in ``history``).
    Runs with ``config.threads`` torch threads and restores the previous setting afterwards.
    """
    out = Path(out)
    for target in (out, Path(checkpoint_out) if checkpoint_out else None):
        if target is not None and not target.parent.exists():
            raise FcnquantError(f"output folder does not exist: {target.parent}")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, data, out, checkpoint_out, dynamic_batch, eval_every, val_data, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(config: TrainConfig, data, out: Path, checkpoint_out, dynamic_batch: bool, eval_every: int, val_data,
           progress: bool) -> TrainResult:
    from tqdm import tqdm

    from fcnquant.data import DataConfig, get_preset
    from fcnquant.evaluate import evaluate
    from fcnquant.execute import RunConfig

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    preset = get_preset(config.preset_name, model_hw=(config.size, config.size))
    samples = load_split(data, config.train_split, config.max_train_images, progress)
    val_root = val_data if val_data is not None else data
    val_samples = load_split(val_root, config.val_split, None, progress) if eval_every else []

    model = build_model(config.model, num_classes=config.num_classes, width=config.width)
    if config.zero_init_residual and not config.init_from:
        _zero_init_residual(model)
    if config.init_from:
        init_from_checkpoint(model, config.init_from)
    wrappers = attach_train_bn(model) if config.uses_train_bn else []
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    optimizer = _make_optimizer(config, model)
    steps_per_epoch = max(1, len(samples) // config.batch_size)  # the last partial batch is dropped
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(config, step, total, steps_per_epoch))
    log.info("training %s (width %g, %d params) on %d images, %d epochs of %d steps, crop %d, preset %s",
             config.model, config.width, count_parameters(model), len(samples), config.epochs, steps_per_epoch,
             config.crop_size, preset.describe())
    history: list[dict] = []
    start = time.perf_counter()
    step, loss_avg = 0, float("nan")
    with tqdm(total=total, desc=f"train {config.model}", unit="step", disable=not progress) as bar:
        for epoch in range(config.epochs):
            order = rng.permutation(len(samples))
            running, count = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                pairs = [augment(*samples[i], preset, config.crop_size, config.scale_range, config.flip, rng)
                         for i in idx]
                x = torch.from_numpy(np.stack([p[0] for p in pairs])).contiguous(memory_format=memory_format)
                y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
                loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
                if not torch.isfinite(loss):
                    raise FcnquantError(f"training diverged at epoch {epoch + 1}, step {b + 1} (loss {loss.item()});"
                                        " lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                optimizer.step()
                scheduler.step()
                step += 1
                running += loss.item()
                count += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / count:.3f}")
            loss_avg = running / max(1, count)
            entry = {"epoch": epoch + 1, "loss": round(loss_avg, 5),
                     "seconds": round(time.perf_counter() - start, 1)}
            if eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == config.epochs):
                entry.update({k: round(v, 3) for k, v in evaluate_torch(model, val_samples, preset, num_classes=config.num_classes).items()})
            history.append(entry)
            log.info("epoch %s", json.dumps(entry))
    seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format).eval()
    if wrappers:
        fold_train_bn(model, wrappers)
    params = count_parameters(model)
    meta = {"fcnquant.model": config.model, "fcnquant.preset": preset.name,
            "fcnquant.num_classes": str(config.num_classes), "fcnquant.width": repr(config.width),
            "fcnquant.weights": f"trained by fcnquant.models.train: {json.dumps(_config_dict(config))}"}
    if checkpoint_out:
        with atomic_path(checkpoint_out) as tmp:
            torch.save({"state_dict": model.state_dict(), "meta": {k: v for k, v in meta.items()}}, str(tmp))
    export_module(model, out, config.size, dynamic_batch=dynamic_batch, metadata=meta)
    result = evaluate(out, DataConfig(val_root, config.val_split), RunConfig(threads=config.threads, progress=progress))
    log.info("%s: val mIoU %.2f (awesome %.2f), pixel acc %.2f", out, result.miou, result.miou_awesome,
             result.pixel_acc)
    return TrainResult(
        onnx=str(out), checkpoint=str(checkpoint_out) if checkpoint_out else None, params=params,
        seconds=round(seconds, 1), epochs=config.epochs, steps=step, train_images=len(samples),
        final_loss=round(loss_avg, 5), miou=result.miou, miou_awesome=result.miou_awesome,
        pixel_acc=result.pixel_acc, val_images=result.images, history=history,
    )


def _config_dict(config: TrainConfig) -> dict:
    d = asdict(config)
    d["scale_range"] = list(config.scale_range)
    return d


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m fcnquant.models.train``."""
    from .zoo import MODEL_NAMES

    p = argparse.ArgumentParser(
        prog="python -m fcnquant.models.train",
        description="Train a zoo FCN (reduced width) on a VOC-layout folder on the CPU, export it to ONNX and "
                    "print its mIoU on the validation split.")
    p.add_argument("model", choices=MODEL_NAMES, help="zoo model name")
    p.add_argument("--data", metavar="DIR", help="VOC root with train/val splits (default: the built-in "
                   "synthetic VOC)")
    p.add_argument("--val-data", metavar="DIR", help="VOC root holding the validation split (default: --data)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--checkpoint-out", metavar="PTH", help="also save the weights as a PyTorch checkpoint")
    p.add_argument("--width", type=float, default=0.125, help="channel width multiplier (default %(default)s)")
    p.add_argument("--size", type=int, default=160, help="input side of the exported model (default %(default)s)")
    p.add_argument("--crop", type=int, help="training crop side (default: --size)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training split (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning-rate decay after the warm-up (default %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length (default %(default)s)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.75, 1.5), metavar=("LOW", "HIGH"),
                   help="random rescale range relative to the preset's geometry (default: 0.75 1.5)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--train-bn", choices=("auto", "on", "off"), default="auto",
                   help="train-time BatchNorm after VGG backbone convs, folded at the end (auto: VGG models)")
    p.add_argument("--init-from", metavar="PTH", help="start from the same-named, same-shaped tensors of this "
                   "checkpoint (e.g. fcn16s from a trained fcn8s; use --train-bn off when fine-tuning)")
    p.add_argument("--preset", choices=("awesome", "mmseg"), help="preprocessing preset (default: the model's)")
    p.add_argument("--train-split", default="train", help="training split name (default %(default)s)")
    p.add_argument("--val-split", default="val", help="validation split name (default %(default)s)")
    p.add_argument("--max-train-images", type=int, help="use only the first N training images")
    p.add_argument("--no-zero-init-residual", action="store_true",
                   help="keep PyTorch's BN init on the last BN of each ResNet block (default: zero)")
    p.add_argument("--no-channels-last", action="store_true", help="train with NCHW instead of NHWC tensors")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="also score the torch model on val every K epochs (default: only the exported model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default %(default)s); on a machine already busy with other work use 1 "
                        "(measured 3-5x faster per step than 2 threads on an oversubscribed 2-core machine)")
    p.add_argument("--json", metavar="OUT", help="write the TrainResult and config as JSON to OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the training CLI; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        from fcnquant._io import atomic_write_text
        from fcnquant.data import builtin_dataset

        config = TrainConfig(
            model=args.model, width=args.width, size=args.size, crop=args.crop, epochs=args.epochs,
            batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
            schedule=args.schedule, warmup_epochs=args.warmup_epochs, scale_range=tuple(args.scale),
            flip=not args.no_flip, train_bn={"auto": None, "on": True, "off": False}[args.train_bn],
            preset=args.preset, train_split=args.train_split, val_split=args.val_split,
            max_train_images=args.max_train_images, seed=args.seed, threads=args.threads,
            channels_last=not args.no_channels_last, init_from=args.init_from,
            zero_init_residual=not args.no_zero_init_residual,
        )
        data = args.data or builtin_dataset(progress=not args.no_progress)
        result = train(config, data, args.out, checkpoint_out=args.checkpoint_out, dynamic_batch=args.dynamic_batch,
                       eval_every=args.eval_every, val_data=args.val_data, progress=not args.no_progress)
        if args.json:
            atomic_write_text(args.json, json.dumps({"config": _config_dict(config), "result": result.to_dict()},
                                                    indent=1) + "\n")
    except FcnquantError as exc:
        print(f"fcnquant.models.train: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.onnx} ({Path(result.onnx).stat().st_size / 1e6:.2f} MB, {result.params} params) after "
          f"{result.seconds:.0f} s of training")
    print(f"val mIoU {result.miou:.2f} (mmseg), {result.miou_awesome:.2f} (awesome), pixel acc "
          f"{result.pixel_acc:.2f} on {result.val_images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
