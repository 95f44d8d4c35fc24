"""GLMC's image transforms for the list-file sets (the reference's): two views per image, stronger augmentation.

ImageNet-LT / iNaturalist training images go through RandomResizedCrop -> ColorJitter(0.4, 0.4, 0.4, 0)
(always) -> RandomGrayscale(0.2) -> PIL Gaussian blur with sigma ~ U[0.1, 2] (probability 0.5) ->
horizontal flip -> ToTensor -> Normalize, twice and independently per image (the reference's
TwoCropTransform). Random numbers come from torch's generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class RandomGaussianBlur:
    """PIL ``ImageFilter.GaussianBlur`` with radius (= sigma) drawn uniformly from ``sigma``.

    The reference's blur (MoCo v2 style): the blur's extent follows the draw, no fixed kernel size,
    unlike ``torchvision.transforms.GaussianBlur``.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        low, high = sigma
        if not 0.0 <= low <= high:
            raise ValueError(f"sigma must be a range 0 <= low <= high, got {sigma}")
        self.sigma = (float(low), float(high))

    def draw_sigma(self) -> float:
        import torch

        low, high = self.sigma
        return low + (high - low) * float(torch.rand(()))

    def __call__(self, img):
        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=self.draw_sigma()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class TwoViews:
    """Apply ``transform`` twice, independently: ``img -> (view_1, view_2)``."""

    def __init__(self, transform: Callable[[Any], Any]):
        self.transform = transform

    def __call__(self, img) -> tuple[Any, Any]:
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def glmc_train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """One GLMC training view for ImageNet-LT / iNaturalist (in the reference's order)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
