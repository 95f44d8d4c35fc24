"""GLMC's paired batch source: instance batches A and weighted-sampler batches B, two views each (SPEC §8.1).

Per epoch, from one generator seeded by (seed, epoch) (``ltsam.data.sources.epoch_generator``, so a
resumed run sees exactly the batches an uninterrupted one would):

- A: a random permutation of the training set cut into batches (the instance-balanced loader, shuffle);
- B: ``len(train)`` draws with replacement, per-sample weight n_c^(-q) (q = ``resample_q``; the
  reference's WeightedRandomSampler, q = 0 in its run.sh = uniform with replacement, q = 1 = class-balanced
  in expectation), cut into batches of the same size; re-drawn (another ``len(train)`` draws) if exhausted;
  each B batch has exactly |A| samples (the step's truncation to |A| is then a no-op);
- two independently augmented views (random crop with zero padding + horizontal flip, then normalise)
  of every sample of A and of B (the reference's TwoCropTransform).

Draw order per batch: A view 1, A view 2, B view 1, B view 2 (after the epoch's A permutation and B draws).
Yields ((A1, A2, y_A), (B1, B2, y_B)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ltsam.data.augment import crop_flip, draw_crop_flip, normalize
from ltsam.data.sources import epoch_generator
from ltsam.glmc.weights import sample_weights

View = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class GLMCBatchSource:
    """Paired, doubly augmented batches from a device-resident uint8 image tensor (N, C, H, W)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor, pad: int = 4, flip: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", resample_q: float = 0.0,
                 cls_num_list: Sequence[int] | None = None, drop_last: bool = False,
                 channels_last: bool = False):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.targets = targets.to(self.device)
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.pad, self.flip = pad, flip
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        cpu_targets = targets.long().cpu()
        if cls_num_list is None:
            cls_num_list = torch.bincount(cpu_targets).tolist()
        self.cls_num_list = list(cls_num_list)
        self.resample_q = float(resample_q)
        self.sample_weights = sample_weights(cpu_targets, self.cls_num_list, self.resample_q)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _view(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        rows, cols, flips = draw_crop_flip(len(idx), self.pad, self.flip, g)
        x = normalize(crop_flip(self.images[idx], rows, cols, flips, self.pad), self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[View, View]]:
        g = epoch_generator(self.seed, self.epoch)
        n = len(self.targets)
        order_a = torch.randperm(n, generator=g)
        order_b = torch.multinomial(self.sample_weights, n, replacement=True, generator=g)
        pos_b = 0
        for b in range(len(self)):
            idx_a = order_a[b * self.batch_size:(b + 1) * self.batch_size]
            m = len(idx_a)
            while pos_b + m > len(order_b):  # B exhausted: draw another len(train) samples
                more = torch.multinomial(self.sample_weights, n, replacement=True, generator=g)
                order_b = torch.cat([order_b[pos_b:], more])
                pos_b = 0
            idx_b = order_b[pos_b:pos_b + m]
            pos_b += m
            idx_a, idx_b = idx_a.to(self.device), idx_b.to(self.device)
            a1, a2 = self._view(idx_a, g), self._view(idx_a, g)
            b1, b2 = self._view(idx_b, g), self._view(idx_b, g)
            yield (a1, a2, self.targets[idx_a]), (b1, b2, self.targets[idx_b])
