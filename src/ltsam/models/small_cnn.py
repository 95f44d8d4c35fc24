"""A small CNN for tiny images (the bundled 8x8 digits): fast on a CPU, with batch-norm like the ResNets."""

from __future__ import annotations

import torch
from torch import nn

from ltsam.models.normed_linear import NormedLinear


class SmallCNN(nn.Module):
    """conv(32)-BN-ReLU, conv(64, stride 2)-BN-ReLU, conv(64)-BN-ReLU, global pool, classifier."""

    classifier_paths = ("linear",)  # ltsam.models.classifier

    def __init__(self, num_classes: int, use_norm: bool = False, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = 2 * w
        self.linear: nn.Module = (NormedLinear(2 * w, num_classes) if use_norm
                                  else nn.Linear(2 * w, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.body(x))
