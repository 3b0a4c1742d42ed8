"""The model registry: names, defaults, construction, seeded random initialisation and backbone weights."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from fcnquant.errors import ModelError

from .checkpoint import extract_state_dict, load_state_dict_strict, read_state_dict
from .resnet_d8 import Bottleneck, FCNResNetD8
from .torchvision_fcn import TorchvisionFCN
from .vgg_fcn import FCN8s, FCN16s, FCN32s

log = logging.getLogger(__name__)

#: scale of the last BN's gamma in each random residual branch (see init_random_weights)
RESIDUAL_GAIN = 0.2


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about one model name."""

    name: str
    family: str  # "vgg" (awesome-semantic-segmentation-pytorch), "resnet" (mmsegmentation) or "torchvision"
    default_size: int  # export input side in pixels, as the reference results used
    preset: str  # preprocessing preset name in fcnquant.data ("awesome" or "mmseg")
    backbone_url: str  # ImageNet weights for pretrained_backbone=True


_VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_R50_URL = "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth"
_R101_URL = "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth"
_TV_R50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"  # torchvision ResNet50 IMAGENET1K_V1
_TV_R101_URL = "https://download.pytorch.org/models/resnet101-63fe2227.pth"  # ResNet101 IMAGENET1K_V1

SPECS: dict[str, ModelSpec] = {
    "fcn32s": ModelSpec("fcn32s", "vgg", 320, "awesome", _VGG16_URL),
    "fcn16s": ModelSpec("fcn16s", "vgg", 320, "awesome", _VGG16_URL),
    "fcn8s": ModelSpec("fcn8s", "vgg", 320, "awesome", _VGG16_URL),
    "fcn_r50_d8": ModelSpec("fcn_r50_d8", "resnet", 512, "mmseg", _R50_URL),
    "fcn_r101_d8": ModelSpec("fcn_r101_d8", "resnet", 512, "mmseg", _R101_URL),
    # torchvision evaluates at short side 520 with ImageNet mean/std on 0..1: the awesome preset's normalisation
    "fcn_resnet50": ModelSpec("fcn_resnet50", "torchvision", 520, "awesome", _TV_R50_URL),
    "fcn_resnet101": ModelSpec("fcn_resnet101", "torchvision", 520, "awesome", _TV_R101_URL),
}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


def get_spec(name: str) -> ModelSpec:
    """Returns the ModelSpec for a zoo name, raising ModelError listing the valid names."""
    try:
        return SPECS[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}") from None


def build_model(
    name: str,
    num_classes: int = 21,
    width: float = 1.0,
    pretrained_backbone: bool | str | os.PathLike[str] = False,
    *,
    aux: bool = False,
) -> nn.Module:
    """Returns a freshly constructed zoo model (in train mode, PyTorch's default initialisation).

    ``width`` scales every channel count (e.g. 0.0625 for a tiny test model). ``pretrained_backbone`` loads ImageNet
    backbone weights: ``True`` downloads the upstream file (torchvision VGG16 or ResNet / open-mmlab ResNetV1c;
    width 1.0 only), a path reads a local file in the same layout. ``aux`` (torchvision models only) also builds
    the training-only ``aux_classifier`` (to hold or count it; ``forward`` never runs it).
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not width > 0:
        raise ModelError(f"width must be positive, got {width!r}")
    if aux and spec.family != "torchvision":
        raise ModelError(f"aux=True applies to the torchvision models only, not {name}")
    if name == "fcn32s":
        model: nn.Module = FCN32s(num_classes, width)
    elif name == "fcn16s":
        model = FCN16s(num_classes, width)
    elif name == "fcn8s":
        model = FCN8s(num_classes, width)
    elif spec.family == "torchvision":
        model = TorchvisionFCN(50 if name == "fcn_resnet50" else 101, num_classes, width, aux=aux)
    else:
        model = FCNResNetD8(50 if name == "fcn_r50_d8" else 101, num_classes, width)
    if pretrained_backbone:
        load_backbone(model, spec, pretrained_backbone)
    return model


def count_parameters(model: nn.Module) -> int:
    """Returns the number of unique parameter values (shared modules counted once)."""
    return sum(p.numel() for p in model.parameters())


def load_backbone(model: nn.Module, spec: ModelSpec, source: bool | str | os.PathLike[str]) -> None:
    """Loads ImageNet classification weights into the model's backbone (strict on the backbone's keys)."""
    if source is True:
        if getattr(model, "width", 1.0) != 1.0:
            raise ModelError("downloadable backbone weights exist only for width=1.0")
        try:
            raw = torch.hub.load_state_dict_from_url(spec.backbone_url, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot download backbone weights from {spec.backbone_url}: {exc}") from exc
        state = extract_state_dict(raw, source=spec.backbone_url)
        where = spec.backbone_url
    else:
        state = read_state_dict(source)
        where = str(source)
    if spec.family == "vgg":
        target = model.pretrained
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    else:
        target = model.backbone
        state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_state_dict_strict(target, state, source=f"backbone weights {where}")
    log.info("loaded %s backbone weights from %s", spec.name, where)


def init_random_weights(model: nn.Module, seed: int = 0, calib_size: int = 96) -> nn.Module:
    """Returns ``model`` (in eval mode) with deterministic seeded weights whose activations are well scaled.

    Convolutions get Kaiming-normal weights (fan_in, ReLU gain) and small uniform biases; BatchNorm affine
    parameters are drawn near (1, 0), the last BN of each residual branch scaled by ``RESIDUAL_GAIN`` (mmseg
    zero-initialises it; a full-scale random branch makes a 100-layer network amplify float32 rounding to ~1e-4).
    BN running statistics are re-estimated from one train-mode pass over seeded N(0, 1) images of ``calib_size``
    pixels, so every normalised activation has roughly unit scale (as in a trained network) and BN folding is
    exercised with non-trivial statistics.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
                m.reset_running_stats()
        for m in model.modules():
            if isinstance(m, Bottleneck):
                # damp each residual branch (mmseg zero-initialises it): keeps the random network well conditioned,
                # so float32 rounding is not amplified through 50-100 layers
                m.bn3.weight.mul_(RESIDUAL_GAIN)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if bns:
            momenta = [m.momentum for m in bns]
            for m in bns:
                m.momentum = None  # cumulative average: one pass sets the batch statistics exactly
            model.eval()
            for m in bns:
                m.train()  # only BN in train mode: dropout stays off, so nothing depends on the global RNG
            try:
                model(torch.randn(2, 3, calib_size, calib_size, generator=g))
            finally:
                for m, mom in zip(bns, momenta):
                    m.momentum = mom
                    m.num_batches_tracked.zero_()
    return model.eval()
