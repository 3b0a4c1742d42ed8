"""mmsegmentation's ``fcn_r50-d8`` / ``fcn_r101-d8``: ResNetV1c backbone at output stride 8 with an FCNHead.

Module tree and state-dict keys follow mmsegmentation so its checkpoints load with strict key matching:

- ``backbone`` (ResNetV1c, style "pytorch"): deep stem ``stem.{0,3,6}`` convs 3->32 (stride 2), 32->32, 32->64
  (no bias) each followed by BN ``stem.{1,4,7}`` and ReLU, then ``maxpool`` 3x3/2. Four ``layerN`` of Bottleneck
  blocks (``conv1..3``, ``bn1..3``, ``downsample.{0,1}``), stride on the 3x3 conv; strides (1, 2, 1, 1), dilations
  (1, 1, 2, 4) with ``contract_dilation``: the first block of a dilated stage uses half the stage's dilation.
- ``decode_head`` (FCNHead, concat_input): ``convs.{0,1}`` ConvModules (3x3 conv without bias + BN + ReLU)
  2048->512->512, ``conv_cat`` on concat(input, convs output) 2560->512, Dropout2d(0.1), ``conv_seg`` 1x1 -> classes.

mmsegmentation's training-only ``auxiliary_head.*`` keys are accepted and dropped when loading. ``forward`` returns
logits resized to the input size (bilinear, ``align_corners=False``), as mmsegmentation's whole-image inference does.
``width`` scales every channel count (stem, stages, head) to build small models of the same topology.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vgg_fcn import scaled

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STRIDES = (1, 2, 1, 1)
DILATIONS = (1, 1, 2, 4)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels), BN after each, identity or ``downsample`` shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _res_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    first_dilation = dilation // 2 if dilation > 1 else dilation  # contract_dilation=True
    layers = [Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """ResNetV1c-D8 backbone; ``forward`` returns the last stage's feature map (stride 8)."""

    def __init__(self, depth: int = 50, width: float = 1.0):
        super().__init__()
        stem = scaled(64, width)
        half = max(1, stem // 2)
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        base = scaled(64, width)
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = base * 2**i
            self.add_module(f"layer{i + 1}", _res_layer(inplanes, planes, blocks, STRIDES[i], DILATIONS[i]))
            inplanes = planes * Bottleneck.expansion
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN and ReLU: keys ``conv.weight`` (no bias) and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class FCNHead(nn.Module):
    """mmsegmentation's FCNHead(num_convs=2, concat_input=True, dropout 0.1)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2):
        super().__init__()
        self.convs = nn.Sequential(
            ConvModule(in_channels, channels), *[ConvModule(channels, channels) for _ in range(num_convs - 1)]
        )
        self.conv_cat = ConvModule(in_channels + channels, channels)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_cat(torch.cat([x, self.convs(x)], dim=1))
        return self.conv_seg(self.dropout(out))


class FCNResNetD8(nn.Module):
    """``backbone`` + ``decode_head``; returns logits upsampled to the input size (bilinear, align_corners=False)."""

    dropped_key_prefixes: tuple[str, ...] = ("auxiliary_head.",)
    renamed_key_prefixes: tuple[tuple[str, str], ...] = ()
    align_corners = False

    def __init__(self, depth: int = 50, num_classes: int = 21, width: float = 1.0):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(STAGE_BLOCKS)}")
        self.num_classes = num_classes
        self.width = width
        self.backbone = ResNetV1c(depth, width)
        self.decode_head = FCNHead(self.backbone.out_channels, scaled(512, width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=False)
