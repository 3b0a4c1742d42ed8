"""torchvision's ``fcn_resnet50`` / ``fcn_resnet101``: ResNet at output stride 8 with a one-conv FCNHead.

Module tree and state-dict keys follow torchvision (``torchvision/models/segmentation/fcn.py``, ``_utils.py`` and
``torchvision/models/resnet.py``) so its checkpoints load with strict key matching, without torchvision installed:

- ``backbone``: torchvision's ``ResNet`` as ``IntermediateLayerGetter`` keeps it, i.e. without ``avgpool``/``fc``:
  ``conv1`` 7x7/2 3->64 (no bias), ``bn1``, ReLU, ``maxpool`` 3x3/2, then ``layer1..4`` of Bottleneck blocks
  (``conv1..3``, ``bn1..3``, ``downsample.{0,1}``; the stride sits on the 3x3 ``conv2``) with 3-4-6-3 (ResNet-50)
  or 3-4-23-3 (ResNet-101) blocks and ``replace_stride_with_dilation=[False, True, True]``: layer2 has stride 2,
  layer3 and layer4 stride 1 with dilation 2 and 4, where each stage's first block keeps the previous dilation
  (1 in layer3, 2 in layer4). Output stride 8, 2048 channels.
- ``classifier``: ``FCNHead(2048, classes)``, an ``nn.Sequential``: ``0`` Conv3x3 2048->512 (in/4, no bias),
  ``1`` BatchNorm, ``2`` ReLU, ``3`` Dropout(0.1), ``4`` Conv1x1 512->classes (with bias).
- ``aux_classifier`` (training only): ``FCNHead(1024, classes)`` on layer3. torchvision's COCO-with-VOC-labels
  checkpoints carry it (their ``num_params`` 35,322,218 / 54,314,346 count it); its keys are accepted and dropped.

``forward`` returns the classifier's logits resized to the input size (bilinear, ``align_corners=False``), which is
torchvision's ``out`` entry. ``width`` scales every channel count (stem, stages, head) for small test models.

Checked once against torchvision 0.28.0 itself (in a scratch environment, not a dependency): the same state-dict
keys, shapes and order (334 keys for ResNet-50, 640 for ResNet-101, with the aux head), the same parameter counts,
and bit-identical ``out`` logits after loading torchvision's state dict strictly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet_d8 import STAGE_BLOCKS, Bottleneck, _res_layer
from .vgg_fcn import scaled

# replace_stride_with_dilation=[False, True, True] gives the same strides and (contracted) dilations as
# mmsegmentation's D8 ResNet: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), first block of a dilated stage at half.
_STRIDES = (1, 2, 1, 1)
_DILATIONS = (1, 1, 2, 4)


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet trunk without ``avgpool``/``fc``; ``forward`` returns the layer4 features (stride 8)."""

    def __init__(self, depth: int = 50, width: float = 1.0):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(STAGE_BLOCKS)}")
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = stem * 2**i
            self.add_module(f"layer{i + 1}", _res_layer(inplanes, planes, blocks, _STRIDES[i], _DILATIONS[i]))
            inplanes = planes * Bottleneck.expansion
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: Conv3x3 (in -> in/4, no bias), BN, ReLU, Dropout(0.1), Conv1x1 (-> classes)."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = max(1, in_channels // 4)
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
            nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1),
        )


class TorchvisionFCN(nn.Module):
    """``backbone`` + ``classifier`` (+ optional ``aux_classifier``); returns logits at the input size."""

    dropped_key_prefixes: tuple[str, ...] = ("aux_classifier.",)
    renamed_key_prefixes: tuple[tuple[str, str], ...] = ()
    align_corners = False

    def __init__(self, depth: int = 50, num_classes: int = 21, width: float = 1.0, aux: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.backbone = TorchvisionResNet(depth, width)
        self.classifier = FCNHead(self.backbone.out_channels, num_classes)
        # only to count or hold torchvision's training head; never run (forward returns the 'out' logits)
        self.aux_classifier = FCNHead(self.backbone.out_channels // 2, num_classes) if aux else None
        if aux:
            self.dropped_key_prefixes = ()  # a model that has the head loads it like any other key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=False)
