"""FCN-32s/16s/8s on a VGG16 backbone, laid out like awesome-semantic-segmentation-pytorch's core/models/fcn.py.

Module tree and state-dict keys match that project so its checkpoints load with strict key matching:

- ``pretrained``: torchvision-style VGG16 ``features`` (13 convs with bias, ReLU, 5 max-pools; no BN).
- FCN16s also holds ``pool4 = pretrained[:24]`` and ``pool5 = pretrained[24:]``; FCN8s holds
  ``pool3 = pretrained[:17]``, ``pool4 = pretrained[17:24]``, ``pool5 = pretrained[24:]``. These wrap the *same*
  module objects as ``pretrained``, so the state dict lists the shared weights under both names while the unique
  parameter count is that of one VGG16.
- ``head = _FCNHead(512, num_classes)``: ``block.0`` conv3x3 512->128 (no bias), ``block.1`` BN, ReLU,
  Dropout(0.1), ``block.4`` conv1x1 -> classes.
- ``score_pool4`` (512->classes) and ``score_pool3`` (256->classes) 1x1 convs with bias.

Every upsample is bilinear with ``align_corners=True`` and skips are fused by addition, as upstream. Unlike upstream
(which returns a tuple and has an optional auxiliary head), ``forward`` returns the logits tensor
``[N, num_classes, H, W]`` at the input size.

``width`` scales every channel count (64/128/256/512 and the head's 128) to build small models of the same topology.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's VGG16 ("D") configuration: channel counts, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def scaled(channels: int, width: float) -> int:
    """Returns ``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def vgg16_features(width: float = 1.0) -> nn.Sequential:
    """Returns VGG16's ``features`` as an ``nn.Sequential`` indexed exactly like torchvision's (31 modules)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_ch = scaled(int(v), width)
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = out_ch
    return nn.Sequential(*layers)


class _FCNHead(nn.Module):
    """conv3x3 (no bias) -> BN -> ReLU -> Dropout(0.1) -> conv1x1; keys ``block.{0,1,4}``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        inter = max(1, in_channels // 4)
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class _VGGFCN(nn.Module):
    """Shared constructor: the VGG16 backbone as ``pretrained`` and the score head."""

    #: checkpoint keys under these prefixes are accepted and dropped (upstream's optional auxiliary head)
    dropped_key_prefixes: tuple[str, ...] = ("auxlayer.",)
    #: older awesome releases stored the backbone as ``features``; renamed on load
    renamed_key_prefixes: tuple[tuple[str, str], ...] = (("features.", "pretrained."),)
    align_corners = True

    def __init__(self, num_classes: int = 21, width: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.pretrained = vgg16_features(width)

    def _add_head(self) -> None:
        # registered after the pool views so the state-dict key order follows upstream's
        self.head = _FCNHead(scaled(512, self.width), self.num_classes)


class FCN32s(_VGGFCN):
    """FCN-32s: head on pool5, one x32 upsample."""

    def __init__(self, num_classes: int = 21, width: float = 1.0):
        super().__init__(num_classes, width)
        self._add_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return _up(self.head(self.pretrained(x)), size)


class FCN16s(_VGGFCN):
    """FCN-16s: pool5 scores upsampled to pool4, plus ``score_pool4``; then upsampled to the input."""

    def __init__(self, num_classes: int = 21, width: float = 1.0):
        super().__init__(num_classes, width)
        self.pool4 = nn.Sequential(*self.pretrained[:24])
        self.pool5 = nn.Sequential(*self.pretrained[24:])
        self._add_head()
        self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool4 = self.pool4(x)
        pool5 = self.pool5(pool4)
        score_pool4 = self.score_pool4(pool4)
        fuse_pool4 = _up(self.head(pool5), score_pool4.shape[2:]) + score_pool4
        return _up(fuse_pool4, x.shape[2:])


class FCN8s(_VGGFCN):
    """FCN-8s: like FCN-16s with a further fusion of ``score_pool3`` at stride 8."""

    def __init__(self, num_classes: int = 21, width: float = 1.0):
        super().__init__(num_classes, width)
        self.pool3 = nn.Sequential(*self.pretrained[:17])
        self.pool4 = nn.Sequential(*self.pretrained[17:24])
        self.pool5 = nn.Sequential(*self.pretrained[24:])
        self._add_head()
        self.score_pool3 = nn.Conv2d(scaled(256, width), num_classes, 1)
        self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.pool3(x)
        pool4 = self.pool4(pool3)
        pool5 = self.pool5(pool4)
        score_pool4 = self.score_pool4(pool4)
        score_pool3 = self.score_pool3(pool3)
        fuse_pool4 = _up(self.head(pool5), score_pool4.shape[2:]) + score_pool4
        fuse_pool3 = _up(fuse_pool4, score_pool3.shape[2:]) + score_pool3
        return _up(fuse_pool3, x.shape[2:])
