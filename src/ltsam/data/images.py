"""In-memory image sets: uint8 tensors (N, C, H, W) with integer labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W)
    targets: torch.Tensor  # int64, (N,)
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.targets[idx], self.classes)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.targets, minlength=num_classes).tolist()
