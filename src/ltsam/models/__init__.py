"""Model registry: build any architecture by name, with a linear or cosine (NormedLinear) head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ltsam.models.normed_linear import NormedLinear
from ltsam.models.resnet_cifar import DEPTHS, ResNetCifar, resnet_cifar
from ltsam.models.small_cnn import SmallCNN
from ltsam.models.torchvision_resnets import BUILDERS as TV_BUILDERS
from ltsam.models.torchvision_resnets import TorchvisionResNet
from ltsam.registry import Registry

ModelFactory = Callable[[int, bool, int], nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", "arch")
"""Architectures by name: ``obj(num_classes, use_norm, in_channels) -> nn.Module`` (``use_norm``: cosine head)."""


def _cifar_resnet(depth: str) -> ModelFactory:
    return lambda num_classes, use_norm, in_channels: resnet_cifar(depth, num_classes, use_norm, in_channels)


def _torchvision_resnet(name: str) -> ModelFactory:
    return lambda num_classes, use_norm, in_channels: TorchvisionResNet(name, num_classes, use_norm, in_channels)


for _depth in DEPTHS:
    MODELS.add(_depth, _cifar_resnet(_depth), help="CIFAR ResNet")
MODELS.add("small_cnn", lambda num_classes, use_norm, in_channels: SmallCNN(num_classes, use_norm, in_channels),
           help="small CNN for the digits demo", cpu_threads=1)  # tiny kernels: one thread is fastest
for _name in TV_BUILDERS:
    MODELS.add(_name, _torchvision_resnet(_name), help="torchvision")


def build_model(arch: str, num_classes: int, use_norm: bool = False, in_channels: int = 3) -> nn.Module:
    """Create a model by registry name; ``use_norm`` selects the cosine head (used with LDAM)."""
    return MODELS.get(arch)(num_classes, use_norm, in_channels)


__all__ = ["MODELS", "NormedLinear", "ResNetCifar", "SmallCNN", "TorchvisionResNet", "build_model", "resnet_cifar"]
