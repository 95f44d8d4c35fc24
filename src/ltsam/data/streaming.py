"""Streaming batch sources for data sets too large for memory: images decoded and augmented in
DataLoader workers with torchvision transforms (the reference's ImageNet-LT / iNat ones), one sampler per mode.

Samplers are seeded from (seed, epoch), so batches are reproducible and a resumed run continues
the same sequence. Under ``torchrun`` every rank draws the same global order and takes its slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ltsam.data.folder import open_image
from ltsam.data.sources import epoch_generator
from ltsam.errors import UserError

T = TypeVar("T")


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """RandomResizedCrop -> flip -> ColorJitter(0.4, 0.4, 0.4, 0) -> ToTensor -> Normalize."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                      T.ColorJitter(0.4, 0.4, 0.4, 0.0), T.ToTensor(), T.Normalize(mean, std)])


def test_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """Resize (shorter side 256/224 of the crop) -> CenterCrop -> ToTensor -> Normalize."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


class FileImageDataset(Dataset):
    """(image, label) pairs read from files with PIL, converted to RGB.

    Files are checked lazily, as they are read: a corrupt or non-image file stops the run with a
    UserError naming the file and, given ``origins`` (e.g. ``list.txt:12``), where it was listed.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | torch.Tensor, transform,
                 origins: Sequence[str] | None = None):
        self.paths, self.labels, self.transform = list(paths), torch.as_tensor(labels), transform
        self.origins = list(origins) if origins is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        where = f" (listed at {self.origins[i]})" if self.origins is not None else ""
        img = open_image(self.paths[i], "RGB", where)
        return self.transform(img), int(self.labels[i])


def worker_errors(batches: Iterable[T]) -> Iterator[T]:
    """``batches`` with a UserError raised in a DataLoader worker re-raised as its own one line.

    A worker's exception reaches the main process re-created with the worker's whole traceback as
    its message; the user should see only what the error says.
    """
    try:
        yield from batches
    except UserError as exc:
        text = str(exc)
        marker = "UserError: "
        raise UserError(text[text.rindex(marker) + len(marker):].strip() if marker in text else text) from None


class EpochSampler(Sampler[int]):
    """A shuffled permutation, or ``len`` weighted draws with replacement (class-balanced), seeded
    by (seed, epoch); with ``world > 1`` each rank takes every ``world``-th index of the global
    order (padded to a multiple of ``world``, as DistributedSampler does)."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None, rank: int = 0, world: int = 1):
        self.n, self.seed, self.weights, self.rank, self.world = n, seed, weights, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        g = epoch_generator(self.seed, self.epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=g)
        return torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        total = len(self) * self.world
        if total > len(order):
            order = torch.cat([order, order[: total - len(order)]])
        return iter(order[self.rank::self.world].tolist())


class LoaderBatchSource:
    """Batches from a DataLoader over a file data set, moved to the training device."""

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochSampler, workers: int,
                 device: torch.device, channels_last: bool = False):
        self.sampler, self.device, self.channels_last = sampler, torch.device(device), channels_last
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                 drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in worker_errors(self.loader):
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def loader_batches(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                   indices: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-shuffled evaluation batches (optionally a subset, e.g. one rank's shard)."""
    from torch.utils.data import Subset

    device = torch.device(device)
    ds = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    for x, y in worker_errors(loader):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
