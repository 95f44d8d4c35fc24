"""Batch sources: what the training step iterates over.

``InMemoryBatchSource`` keeps the whole training set as one uint8 tensor on the training device and
augments whole batches there. Its draws come from a generator re-seeded from (seed, epoch) at the
start of every epoch, so a resumed run sees exactly the batches an uninterrupted one would.
Other sources (streaming loaders, distributed samplers) only need ``__iter__``, ``__len__`` and
``set_epoch``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from ltsam.data.augment import crop_flip, draw_crop_flip, normalize


class BatchSource(Protocol):
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


class InMemoryBatchSource:
    """Shuffled (or class-balanced re-sampled) augmented batches from a device-resident uint8 tensor.

    ``sample_weights`` switches from a random permutation to ``len`` draws with replacement,
    proportional to the weights (the class-balanced sampler of the ``resample`` rule).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor, *, pad: int = 4, flip: bool = True,
                 seed: int = 0, device: torch.device | str = "cpu",
                 sample_weights: torch.Tensor | None = None, drop_last: bool = False,
                 channels_last: bool = False, rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.targets = targets.to(self.device)
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.pad, self.flip = pad, flip
        self.seed = seed
        self.sample_weights = sample_weights
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _local_size(self) -> int:
        return math.ceil(len(self.targets) / self.world)

    def __len__(self) -> int:
        n = self._local_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global order: every rank draws the same order and takes every
        world-th index of it, padded like DistributedSampler (the whole order when world = 1)."""
        if self.world == 1:
            return order
        total = self._local_size() * self.world
        return torch.cat([order, order[: total - len(order)]])[self.rank::self.world]

    def augment_generator(self, g: torch.Generator) -> torch.Generator:
        """The generator of the augmentation draws: ``g`` itself on one process, a per-rank one under DDP
        (ranks must not crop and flip alike)."""
        return g if self.world == 1 else epoch_generator(self.seed + 7919 * (self.rank + 1), self.epoch)

    def view(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One augmented, normalised view of the images at ``idx`` (pad-crop-flip drawn from ``g``)."""
        rows, cols, flips = draw_crop_flip(len(idx), self.pad, self.flip, g)
        x = normalize(crop_flip(self.images[idx.to(self.device)], rows, cols, flips, self.pad), self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = epoch_generator(self.seed, self.epoch)
        n = len(self.targets)
        if self.sample_weights is None:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.multinomial(self.sample_weights.double(), n, replacement=True, generator=g)
        order = self.shard(order)
        g = self.augment_generator(g)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.view(idx, g), self.targets[idx.to(self.device)]


class FeatureBatchSource(InMemoryBatchSource):
    """``source``'s batches (the same order, re-sampling and sharding) with each training image replaced by its row
    of ``features`` (``--feature-cache``): a frozen backbone's features of the un-augmented images, computed once
    by :func:`cached_features`. Per-epoch augmentation is off: every epoch sees the same features."""

    def __init__(self, source: InMemoryBatchSource, features: torch.Tensor):
        vars(self).update(vars(source))
        self.pad, self.flip = 0, False
        self.features = features.to(self.device)

    def view(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.features[idx.to(self.device)]


def cached_features(source: InMemoryBatchSource, features: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int) -> FeatureBatchSource:
    """``source`` on ``features`` of its un-augmented, normalised training images (the view ``source`` gives with
    no crop and no flip), computed once in batches of ``batch_size`` without gradients."""
    plain = copy.copy(source)
    plain.pad, plain.flip, plain.channels_last = 0, False, False
    g = torch.Generator()  # no draws matter: no crop, no flip
    n = len(source.targets)
    with torch.no_grad():
        rows = [features(plain.view(torch.arange(i, min(i + batch_size, n)), g)).float()
                for i in range(0, n, batch_size)]
    return FeatureBatchSource(source, torch.cat(rows))


def eval_batches(images: torch.Tensor, targets: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 batch_size: int = 1000, device: torch.device | str = "cpu", *,
                 channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-augmented, normalised batches in file order (for evaluation and Hessian analysis)."""
    device = torch.device(device)
    for start in range(0, len(targets), batch_size):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, targets[start:start + batch_size].to(device)
