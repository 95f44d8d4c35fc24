"""Model registry: build any architecture by name, with a linear or cosine (NormedLinear) head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ltsam.errors import UserError
from ltsam.models.normed_linear import NormedLinear
from ltsam.models.resnet_cifar import DEPTHS, ResNetCifar, resnet_cifar
from ltsam.models.small_cnn import SmallCNN
from ltsam.models.torchvision_resnets import BUILDERS as TV_BUILDERS
from ltsam.models.torchvision_resnets import TorchvisionResNet

ModelFactory = Callable[[int, bool, int], nn.Module]

MODELS: dict[str, ModelFactory] = {
    name: (lambda num_classes, use_norm, in_channels, _n=name: resnet_cifar(_n, num_classes, use_norm,
                                                                            in_channels))
    for name in DEPTHS
}
MODELS["small_cnn"] = lambda num_classes, use_norm, in_channels: SmallCNN(num_classes, use_norm, in_channels)
for _name in TV_BUILDERS:
    MODELS[_name] = (lambda num_classes, use_norm, in_channels, _n=_name:
                     TorchvisionResNet(_n, num_classes, use_norm, in_channels))


def build_model(arch: str, num_classes: int, use_norm: bool = False, in_channels: int = 3) -> nn.Module:
    """Create a model by registry name; ``use_norm`` selects the cosine head (used with LDAM)."""
    key = arch.lower()
    if key not in MODELS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[key](num_classes, use_norm, in_channels)


__all__ = ["MODELS", "NormedLinear", "ResNetCifar", "SmallCNN", "TorchvisionResNet", "build_model", "resnet_cifar"]
