"""Cosine-similarity classifier head: LDAM's (its scale in the loss) or a scaled one (``--head-scale``, LIFT's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    """Logits = scale x cos(feature, class vector); no bias. ``scale`` 1 (the default) is LDAM's head, whose
    scale s is in the loss; a cosine head trained with another loss needs one (``--head-scale``; LIFT's 25).

    Weight stored as (in_features, out_features), one column per class, initialised uniform(-1, 1)
    and renormalised to unit columns (the reference's ``renorm_(2, 1, 1e-5).mul_(1e5)``).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)
        return cosine if self.scale == 1.0 else cosine * self.scale

    def extra_repr(self) -> str:
        scale = "" if self.scale == 1.0 else f", scale={self.scale:g}"
        return f"in_features={self.in_features}, out_features={self.out_features}{scale}"
