"""ImageNet-style ResNets / ResNeXts / wide ResNets (torchvision architectures, trained from scratch).

The classifier ``fc`` is a Linear or, for LDAM, a NormedLinear. ``resnet10`` and
``resnext152_32x4d`` (offered by the reference's model file) are built from torchvision's blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ltsam.models.normed_linear import NormedLinear

NAMES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext152_32x4d", "wide_resnet50_2", "wide_resnet101_2")
"""The architectures, by name. torchvision is imported when one is built (its import costs ~1.5 s of every
``ltsam`` command's start otherwise)."""


def builder(name: str) -> Callable[..., nn.Module]:
    """torchvision's constructor of ``name`` (random weights); resnet10 and resnext152_32x4d from its blocks."""
    from torchvision.models import resnet as tvr

    if name == "resnet10":
        return lambda **kw: tvr.ResNet(tvr.BasicBlock, [1, 1, 1, 1], **kw)
    if name == "resnext152_32x4d":
        return lambda **kw: tvr.ResNet(tvr.Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=4, **kw)
    make: Callable[..., Any] = getattr(tvr, name)
    return lambda **kw: make(weights=None, **kw)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet with ``features(x)`` / ``feature_dim`` like the CIFAR models."""

    classifier_paths = ("net.fc",)  # ltsam.models.classifier

    def __init__(self, name: str, num_classes: int, use_norm: bool = False, in_channels: int = 3):
        super().__init__()
        net: Any = builder(name)()
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = NormedLinear(self.feature_dim, num_classes) if use_norm else nn.Linear(self.feature_dim, num_classes)
        self.net = net

    def drop_classifier(self) -> None:
        """Replace ``fc`` by ``nn.Identity`` (a model that brings its own heads, such as GLMC's)."""
        self.net.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.features(x))
