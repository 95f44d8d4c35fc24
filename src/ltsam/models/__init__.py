"""Model registry: build any architecture by name, with a linear or cosine (NormedLinear) head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ltsam.models.normed_linear import NormedLinear
from ltsam.models.pretrained import clip_models, timm_models
from ltsam.models.resnet_cifar import DEPTHS, ResNetCifar, resnet_cifar
from ltsam.models.small_cnn import SmallCNN
from ltsam.models.torchvision_resnets import NAMES as TV_NAMES
from ltsam.models.torchvision_resnets import TorchvisionResNet
from ltsam.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", "arch")
"""Architectures by name: ``obj(num_classes, use_norm, in_channels) -> nn.Module`` (``use_norm``: cosine head).
An entry with options (the ``timm:`` family) also takes them as keywords, and ``weights`` (load its
pretrained weights: a new run; False: the architecture only, for a checkpoint's weights). A registration's
``init_model(model, cfg, class_names)`` hook finishes a new run's model (the ``clip:`` text head)."""


def _cifar_resnet(depth: str) -> ModelFactory:
    return lambda num_classes, use_norm, in_channels: resnet_cifar(depth, num_classes, use_norm, in_channels)


def _torchvision_resnet(name: str) -> ModelFactory:
    return lambda num_classes, use_norm, in_channels: TorchvisionResNet(name, num_classes, use_norm, in_channels)


for _depth in DEPTHS:
    MODELS.add(_depth, _cifar_resnet(_depth), help="CIFAR ResNet")
MODELS.add("small_cnn", lambda num_classes, use_norm, in_channels: SmallCNN(num_classes, use_norm, in_channels),
           help="small CNN for the digits demo", cpu_threads=1)  # tiny kernels: one thread is fastest
for _name in TV_NAMES:
    MODELS.add(_name, _torchvision_resnet(_name), help="torchvision")
MODELS.add_family("timm", timm_models.timm_factory, help="any timm model, pretrained; the ltsam[pretrained] extra",
                  options=timm_models.OPTIONS, resolve=timm_models.resolve, pretrained=True)
MODELS.add_family("clip", clip_models.clip_factory, help="an open_clip image tower (ViT-B-16, RN50), pretrained; the "
                  "ltsam[pretrained] extra", options=clip_models.OPTIONS, resolve=clip_models.resolve,
                  init_model=clip_models.init_model, pretrained=True)


def build_model(arch: str, num_classes: int, use_norm: bool = False, in_channels: int = 3, *,
                options: dict[str, Any] | None = None, weights: bool = False, head_scale: float = 1.0) -> nn.Module:
    """Create a model by registry name; ``use_norm`` selects the cosine head (used with LDAM), ``head_scale`` its
    logit scale (``--head-scale``; 1 for LDAM, whose loss scales). ``options``: the entry's option values
    (``arch_options`` of a checkpoint's meta); ``weights``: load pretrained weights."""
    entry = MODELS.entry(arch)
    if not entry.options:
        model = entry.obj(num_classes, use_norm, in_channels)
    else:
        model = entry.obj(num_classes, use_norm, in_channels, **(options or {}), weights=weights)
    if head_scale != 1.0:
        heads = [m for m in model.modules() if isinstance(m, NormedLinear)]
        if not heads:
            raise ValueError(f"head_scale {head_scale} scales a cosine head; {arch} was built with a linear one")
        for head in heads:
            head.scale = float(head_scale)
    return model


def arch_options(arch: str, config: Any) -> dict[str, Any]:
    """The option values of ``arch``'s entry in ``config`` (plain data, for a checkpoint's ``model_meta``)."""
    return {o.name: getattr(config, o.name, o.default) for o in MODELS.entry(arch).options}


__all__ = ["MODELS", "NormedLinear", "ResNetCifar", "SmallCNN", "TorchvisionResNet", "arch_options", "build_model",
           "resnet_cifar"]
