"""GLMC networks: any feature backbone with the four GLMC heads (the reference GLMC code's).

Heads on the d-dimensional feature f: ``fc`` Linear(d, C) (balanced/instance head), ``fc_cb``
Linear(d, C) (re-balanced head), ``projection_head`` Linear(d, h) giving z and ``contrast_head``
Linear(h, h) giving p; single linear layers, no BN/ReLU. The reference uses h = 256 for d = 512
(ResNet-34) and d = 2048 (ResNeXt-50) and h = 128 for d = 256 (wide ResNet-32); ltsam's default
h = min(256, d // 2) reproduces all three and scales down for small backbones (d = 64 -> 32).

``GLMCNet.forward`` in train mode returns (logits_fc, logits_fc_cb, z, p); in eval mode it returns the
``fc_cb`` logits only, because inference uses the re-balanced head, so evaluation code that calls
``model(x)`` on an eval-mode model works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ltsam.errors import UserError
from ltsam.models import build_model
from ltsam.models.resnet_cifar import BasicBlock, projection_shortcut
from ltsam.registry import Registry


def default_proj_dim(feature_dim: int) -> int:
    """h = min(256, d // 2): 512 -> 256, 256 -> 128, 2048 -> 256 (the reference's sizes), 64 -> 32."""
    return max(1, min(256, feature_dim // 2))


class GLMCNet(nn.Module):
    """A backbone with ``.features(x) -> (N, d)`` and ``.feature_dim`` plus the four GLMC heads.

    A classifier the backbone carries (``.linear`` of ltsam's ResNetCifar and SmallCNN, ``fc`` of the
    torchvision ResNets via ``drop_classifier()``) is unused by GLMC; with ``drop_backbone_head`` (default)
    it is replaced by ``nn.Identity`` so the model holds no dead parameters (this modifies the backbone).
    """

    backbone: Any  # a module with .features(x) and .feature_dim (checked in __init__)
    classifier_paths = ("fc_cb", "fc")  # the re-balanced head predicts; fc is trained beside it

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int | None = None,
                 drop_backbone_head: bool = True):
        super().__init__()
        if not hasattr(backbone, "features") or not hasattr(backbone, "feature_dim"):
            raise TypeError("the GLMC backbone needs a .features(x) method and a .feature_dim attribute")
        if drop_backbone_head and hasattr(backbone, "drop_classifier"):
            backbone.drop_classifier()  # type: ignore[operator]  # a method; Module.__getattr__ says Tensor
        elif drop_backbone_head and isinstance(getattr(backbone, "linear", None), nn.Module):
            backbone.linear = nn.Identity()
        d = int(cast(Any, backbone).feature_dim)
        h = default_proj_dim(d) if proj_dim is None else int(proj_dim)
        self.backbone = backbone
        self.num_classes, self.feature_dim, self.proj_dim = num_classes, d, h
        self.fc = nn.Linear(d, num_classes)
        self.fc_cb = nn.Linear(d, num_classes)
        self.projection_head = nn.Linear(d, h)
        self.contrast_head = nn.Linear(h, h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits_fc, logits_fc_cb, z, p) whatever the mode; z = projection_head(f), p = contrast_head(z)."""
        f = self.backbone.features(x)
        z = self.projection_head(f)
        return self.fc(f), self.fc_cb(f), z, self.contrast_head(z)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the re-balanced head ``fc_cb`` (what inference uses)."""
        return self.fc_cb(self.backbone.features(x))

    def forward(self, x: torch.Tensor):
        """Train mode: (logits_fc, logits_fc_cb, z, p). Eval mode: the ``fc_cb`` logits only."""
        if self.training:
            return self.forward_all(x)
        return self.predict(x)


# --------------------------------------------------------------------------- CIFAR ResNet-34 (GLMC)
def projection_block(in_planes: int, planes: int, stride: int = 1) -> nn.Module:
    """The CIFAR BasicBlock with a 1x1-conv + BN projection shortcut where the shape changes (option B)."""
    return BasicBlock(in_planes, planes, stride, shortcut=projection_shortcut)


class _StagedBackbone(nn.Module):
    """3x3 stem (stride 1, no max-pool) + BN + ReLU, residual stages, global average pool."""

    def __init__(self, block: Callable[[int, int, int], nn.Module], widths: list[int], blocks: list[int],
                 strides: list[int], in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for planes, n, stride in zip(widths, blocks, strides, strict=True):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(block(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.feature_dim = widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNet34Backbone(_StagedBackbone):
    """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3], 64/128/256/512 channels, strides 1/2/2/2 -> 512-d."""

    def __init__(self, in_channels: int = 3):
        super().__init__(projection_block, [64, 128, 256, 512], [3, 4, 6, 3], [1, 2, 2, 2], in_channels)


class WideResNet32Backbone(_StagedBackbone):
    """Option-A ResNet-32 (5 blocks a stage, parameter-free shortcuts) with 64/128/256 channels -> 256-d."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__(BasicBlock, [width, 2 * width, 4 * width], [5, 5, 5], [1, 2, 2], in_channels)


def glmc_resnet34_cifar(num_classes: int, in_channels: int = 3, proj_dim: int | None = None) -> GLMCNet:
    """GLMC's CIFAR ``resnet34`` (run.sh/README): heads 512 -> C (x2), 512 -> 256, 256 -> 256.

    PyTorch default initialisation throughout, as the reference.
    """
    return GLMCNet(ResNet34Backbone(in_channels), num_classes, proj_dim)


def glmc_resnet32_wide(num_classes: int, in_channels: int = 3, proj_dim: int | None = None) -> GLMCNet:
    """GLMC's CIFAR ``resnet32`` (``ResNet_modify``): heads 256 -> C (x2), 256 -> 128, 128 -> 128.

    Kaiming-normal init on every conv and linear weight (heads included); biases and BN keep PyTorch's
    defaults.
    """
    net = GLMCNet(WideResNet32Backbone(in_channels), num_classes, proj_dim)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return net


GLMCFactory = Callable[..., GLMCNet]

GLMC_ARCHS: Registry[GLMCFactory] = Registry("GLMC model", "arch")
"""GLMC's own architectures (its heads built in); any ltsam model can also be wrapped with the heads."""
GLMC_ARCHS.add("glmc_resnet34", glmc_resnet34_cifar, help="GLMC's CIFAR ResNet-34")
GLMC_ARCHS.add("glmc_resnet32", glmc_resnet32_wide, help="GLMC's wide CIFAR ResNet-32")


def wrap_backbone(model: nn.Module, num_classes: int, proj_dim: int | None = None) -> GLMCNet:
    """GLMC heads on any ltsam backbone (``.features``/``.feature_dim``); its ``.linear`` is dropped."""
    return GLMCNet(model, num_classes, proj_dim)


def build_glmc_model(arch: str, num_classes: int, in_channels: int = 3, proj_dim: int | None = None) -> GLMCNet:
    """A GLMC model by name: ``glmc_resnet34``/``glmc_resnet32``, or any ltsam arch wrapped with the heads."""
    key = arch.lower()
    if key in GLMC_ARCHS:
        return GLMC_ARCHS.get(key)(num_classes, in_channels=in_channels, proj_dim=proj_dim)
    try:
        backbone = build_model(key, num_classes, use_norm=False, in_channels=in_channels)
    except UserError as err:
        raise UserError(f"{err}; GLMC also offers {', '.join(sorted(GLMC_ARCHS))}") from None
    return wrap_backbone(backbone, num_classes, proj_dim)
