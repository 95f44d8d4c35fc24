"""GLMC's paired batch sources: instance batches A and weighted-sampler batches B, two views each (as the reference's).

Per epoch, from draws seeded by (seed, epoch) (``ltsam.data.sources.epoch_generator``, so a resumed run
sees exactly the batches an uninterrupted one would):

- A: a random permutation of the training set cut into batches (the instance-balanced loader, shuffle);
- B: ``len(train)`` draws with replacement, per-sample weight n_c^(-q) (q = ``resample_q``; the
  reference's WeightedRandomSampler, q = 0 in its run.sh = uniform with replacement, q = 1 = class-balanced
  in expectation), cut into batches of the same size; re-drawn if exhausted; each B batch has exactly |A|
  samples (the step's truncation to |A| is then a no-op);
- two independently augmented views of every sample of A and of B (the reference's TwoCropTransform).

Under ``torchrun`` every rank draws the same global A and B orders and takes its slice of each.
Both sources yield ((A1, A2, y_A), (B1, B2, y_B)):

- :class:`GLMCBatchSource`: in-memory data (a uint8 tensor on the device), pad-crop-flip views;
- :class:`GLMCStreamSource`: list-file data decoded in DataLoader workers with GLMC's ImageNet
  augmentation (:mod:`ltsam.glmc.transforms`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset

from ltsam.data.lt_data import InMemoryLTData, LTData, StreamingLTData
from ltsam.data.sources import InMemoryBatchSource, epoch_generator
from ltsam.data.streaming import EpochSampler, worker_errors
from ltsam.glmc.weights import sample_weights

View = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# B's sampler is seeded apart from A's, so the two streams are independent draws.
_B_SEED_OFFSET = 104_729


class GLMCBatchSource(InMemoryBatchSource):
    """Paired, doubly augmented batches from a device-resident uint8 image tensor (N, C, H, W).

    Draw order per epoch: the A permutation, the B draws, then per batch A view 1, A view 2, B view 1,
    B view 2 (augmentation from a per-rank generator under DDP).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor, *, pad: int = 4, flip: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", resample_q: float = 0.0,
                 cls_num_list: Sequence[int] | None = None, drop_last: bool = False,
                 channels_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        super().__init__(images, targets, batch_size, mean, std, pad=pad, flip=flip, seed=seed,
                         device=device, sample_weights=None, drop_last=drop_last, channels_last=channels_last,
                         rank=rank, world=world)
        cpu_targets = targets.long().cpu()
        self.cls_num_list = list(torch.bincount(cpu_targets).tolist() if cls_num_list is None else cls_num_list)
        self.resample_q = float(resample_q)
        self.b_weights = sample_weights(cpu_targets, self.cls_num_list, self.resample_q)

    def __iter__(self) -> Iterator[tuple[View, View]]:  # type: ignore[override]  # GLMC batches: two views
        g = epoch_generator(self.seed, self.epoch)
        n = len(self.targets)
        order_a = self.shard(torch.randperm(n, generator=g))
        order_b = self.shard(torch.multinomial(self.b_weights, n, replacement=True, generator=g))
        g = self.augment_generator(g)
        pos_b = 0
        for b in range(len(self)):
            idx_a = order_a[b * self.batch_size:(b + 1) * self.batch_size]
            m = len(idx_a)
            while pos_b + m > len(order_b):  # B exhausted: draw another len(train) samples
                more = self.shard(torch.multinomial(self.b_weights, n, replacement=True, generator=g))
                order_b = torch.cat([order_b[pos_b:], more])
                pos_b = 0
            idx_b = order_b[pos_b:pos_b + m]
            pos_b += m
            a1, a2 = self.view(idx_a, g), self.view(idx_a, g)
            b1, b2 = self.view(idx_b, g), self.view(idx_b, g)
            yield ((a1, a2, self.targets[idx_a.to(self.device)]),
                   (b1, b2, self.targets[idx_b.to(self.device)]))


class GLMCStreamSource:
    """Paired two-view batches from a file data set: loader A (shuffled) and loader B (weighted draws
    with replacement), each with ``workers`` DataLoader workers; views moved to ``device``.

    ``dataset[i]`` must return ((view_1, view_2), label), e.g. a ``FileImageDataset`` whose transform is
    ``TwoViews(glmc_train_transform(...))``.
    """

    def __init__(self, dataset: Dataset, labels: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device | str, *, resample_q: float = 0.0, cls_num_list: Sequence[int] | None = None,
                 workers: int = 0, channels_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        labels = torch.as_tensor(labels).long().cpu()
        counts = list(torch.bincount(labels).tolist() if cls_num_list is None else cls_num_list)
        self.device, self.channels_last = torch.device(device), channels_last
        self.sampler_a = EpochSampler(len(labels), seed, None, rank, world)
        self.sampler_b = EpochSampler(len(labels), seed + _B_SEED_OFFSET, sample_weights(labels, counts, resample_q),
                                      rank, world)
        pin = self.device.type == "cuda"
        self.loader_a, self.loader_b = (
            DataLoader(dataset, batch_size=batch_size, sampler=s, num_workers=workers, pin_memory=pin,
                       persistent_workers=workers > 0, drop_last=False)
            for s in (self.sampler_a, self.sampler_b))

    def set_epoch(self, epoch: int) -> None:
        self.sampler_a.set_epoch(epoch)
        self.sampler_b.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader_a)

    def _move(self, views: Sequence[torch.Tensor], y: torch.Tensor) -> View:
        v1, v2 = (v.to(self.device, non_blocking=True) for v in views)
        if self.channels_last:
            v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        return v1, v2, y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[View, View]]:
        it_b = iter(worker_errors(self.loader_b))
        for views_a, y_a in worker_errors(self.loader_a):
            try:
                views_b, y_b = next(it_b)
            except StopIteration:  # B exhausted (only if it were shorter than A): start it again
                it_b = iter(worker_errors(self.loader_b))
                views_b, y_b = next(it_b)
            m = len(y_a)
            yield self._move(views_a, y_a), self._move([v[:m] for v in views_b], y_b[:m])


def glmc_source(data: LTData, batch_size: int, seed: int, device: torch.device | str, resample_q: float, *,
                channels_last: bool = False, workers: int = 0, rank: int = 0,
                world: int = 1) -> GLMCBatchSource | GLMCStreamSource:
    """GLMC's paired two-view batches for a loaded data set: from the in-memory uint8 tensor (CIFAR-style
    augmentation), or decoded in DataLoader workers with GLMC's ImageNet augmentation. ``data.streaming``
    tells the two kinds apart."""
    if not data.streaming:
        held = cast(InMemoryLTData, data)
        return GLMCBatchSource(held.train.images, held.train.targets, batch_size, held.mean, held.std,
                               pad=held.pad, flip=held.flip, seed=seed, device=device, resample_q=resample_q,
                               cls_num_list=held.cls_num_list, channels_last=channels_last,
                               rank=rank, world=world)
    from ltsam.glmc.transforms import TwoViews, glmc_train_transform

    listed = cast(StreamingLTData, data)
    ds = listed.files("train", TwoViews(glmc_train_transform(listed.image_size, listed.mean, listed.std)))
    return GLMCStreamSource(ds, listed.train_labels, batch_size, seed, device, resample_q=resample_q,
                            cls_num_list=listed.cls_num_list, workers=workers, channels_last=channels_last,
                            rank=rank, world=world)
