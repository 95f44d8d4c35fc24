"""CIFAR ResNets (He et al. 2016, option-A shortcuts): resnet20/32/44/56/110."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ltsam.models.normed_linear import NormedLinear


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: take every second pixel, zero-pad the channels by planes/4 a side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def option_a_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option A (He et al.): parameter-free, every second pixel and zero-padded channels."""
    return _ShortcutA(planes // 4)


def projection_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B: a 1x1 convolution and batch norm (GLMC's CIFAR ResNet-34)."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection; where the shape changes the residual goes
    through ``shortcut(in_planes, planes, stride)`` (option A by default)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: Callable[[int, int, int], nn.Module] = option_a_shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """conv3x3(16) -> 3 stages (16/32/64 channels, strides 1/2/2) -> global pool -> classifier."""

    classifier_paths = ("linear",)  # ltsam.models.classifier

    def __init__(self, num_blocks: list[int], num_classes: int = 10, use_norm: bool = False,
                 in_channels: int = 3):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.feature_dim = 64
        self.linear: nn.Module = NormedLinear(64, num_classes) if use_norm else nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def resnet_cifar(depth_name: str, num_classes: int, use_norm: bool = False, in_channels: int = 3
                 ) -> ResNetCifar:
    n = DEPTHS[depth_name]
    return ResNetCifar([n, n, n], num_classes, use_norm, in_channels)
