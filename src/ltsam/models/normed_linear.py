"""Cosine-similarity classifier head used with LDAM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    """Logits = cos(feature, class vector) in [-1, 1]; no bias. The LDAM scale s is in the loss.

    Weight stored as (in_features, out_features), one column per class, initialised uniform(-1, 1)
    and renormalised to unit columns (the reference's ``renorm_(2, 1, 1e-5).mul_(1e5)``).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
