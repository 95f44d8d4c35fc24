"""ImageNet-style ResNets / ResNeXts / wide ResNets (torchvision architectures, trained from scratch).

The classifier ``fc`` is a Linear or, for LDAM, a NormedLinear. ``resnet10`` and
``resnext152_32x4d`` (offered by the reference's model file) are built from torchvision's blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet as tvr

from ltsam.models.normed_linear import NormedLinear


def _resnet10(**kw) -> tvr.ResNet:
    return tvr.ResNet(tvr.BasicBlock, [1, 1, 1, 1], **kw)


def _resnext152_32x4d(**kw) -> tvr.ResNet:
    return tvr.ResNet(tvr.Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=4, **kw)


BUILDERS: dict[str, Callable[..., tvr.ResNet]] = {
    "resnet10": _resnet10, "resnet18": tvr.resnet18, "resnet34": tvr.resnet34,
    "resnet50": tvr.resnet50, "resnet101": tvr.resnet101, "resnet152": tvr.resnet152,
    "resnext50_32x4d": tvr.resnext50_32x4d, "resnext101_32x8d": tvr.resnext101_32x8d,
    "resnext152_32x4d": _resnext152_32x4d, "wide_resnet50_2": tvr.wide_resnet50_2,
    "wide_resnet101_2": tvr.wide_resnet101_2,
}


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet with ``features(x)`` / ``feature_dim`` like the CIFAR models."""

    classifier_paths = ("net.fc",)  # ltsam.models.classifier

    def __init__(self, name: str, num_classes: int, use_norm: bool = False, in_channels: int = 3):
        super().__init__()
        net = BUILDERS[name](weights=None) if name in tvr.__dict__ else BUILDERS[name]()
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
