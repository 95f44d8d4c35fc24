"""The two kinds of long-tailed data set behind one interface (``LTData``): ``InMemoryLTData`` (digits, CIFAR,
image folders: one uint8 tensor on the training device, batched augmentation) and ``StreamingLTData`` (list-file
sets such as ImageNet-LT and iNaturalist-2018: decoded and augmented in DataLoader workers). Code that needs to
tell them apart reads ``data.streaming``; code that does not reads the ``LTData`` protocol only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from ltsam.data.images import ImageSet

if TYPE_CHECKING:
    from ltsam.data.sources import BatchSource

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def _per_sample(class_weights: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor | None:
    return None if class_weights is None else class_weights.double()[targets.long()]


@dataclass(kw_only=True)
class InMemoryLTData:
    """A long-tailed training set, its balanced test set and how to augment and normalise them."""

    streaming: ClassVar[bool] = False  # held in memory as uint8 tensors (digits, CIFAR, image folders)

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    cls_num_list: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    pad: int
    flip: bool
    val: ImageSet | None = None  # the held-out validation images (--val-per-class / --val-fraction)
    val_note: str = ""  # what was held out and from where, said at the start of a run

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def val_size(self) -> int:
        return 0 if self.val is None else len(self.val)

    @property
    def val_cls_num_list(self) -> list[int]:
        return [] if self.val is None else self.val.class_counts(self.num_classes)

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    def train_source(self, batch_size: int, seed: int, device: torch.device,
                     class_weights: torch.Tensor | None = None, *, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> BatchSource:
        from ltsam.data.sources import InMemoryBatchSource

        return InMemoryBatchSource(self.train.images, self.train.targets, batch_size, self.mean, self.std,
                                   pad=self.pad, flip=self.flip, seed=seed, device=device,
                                   sample_weights=_per_sample(class_weights, self.train.targets),
                                   channels_last=channels_last, rank=rank, world=world)

    def test_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        return self._eval_batches(self.test, batch_size, device, channels_last, rank, world)

    def val_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                    workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        """The validation images, as :meth:`test_batches` hands out the test images."""
        if self.val is None:
            raise ValueError("this data set has no validation split (--val-per-class / --val-fraction)")
        return self._eval_batches(self.val, batch_size, device, channels_last, rank, world)

    def _eval_batches(self, split: ImageSet, batch_size: int, device: torch.device, channels_last: bool,
                      rank: int, world: int) -> Batches:
        from ltsam.data.sources import eval_batches

        images, targets = split.images, split.targets
        if world > 1:
            images, targets = images[rank::world], targets[rank::world]
        return eval_batches(images, targets, self.mean, self.std, batch_size, device,
                            channels_last=channels_last)




@dataclass(kw_only=True)
class StreamingLTData:
    """A list-file data set read from disk batch by batch."""

    streaming: ClassVar[bool] = True  # decoded from files per batch: ``labels`` and ``decode`` reach its images

    name: str
    train_paths: list[Path]
    train_labels: torch.Tensor
    test_paths: list[Path]
    test_labels: torch.Tensor
    classes: list[str]
    cls_num_list: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    train_origins: list[str] | None = None  # "list_file:line" per image, named when one cannot be read
    test_origins: list[str] | None = None
    val_paths: list[Path] | None = None  # held out of the training list (--val-per-class / --val-fraction) or
    # read from --val-list
    val_labels: torch.Tensor | None = None
    val_origins: list[str] | None = None
    val_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    in_channels = 3

    def files(self, split: str, transform):
        """The ``train``, ``test`` or ``val`` list as a FileImageDataset with ``transform``."""
        from ltsam.data.streaming import FileImageDataset

        if split == "train":
            return FileImageDataset(self.train_paths, self.train_labels, transform, self.train_origins)
        if split == "val":
            if self.val_paths is None:
                raise ValueError("this data set has no validation split (--val-per-class / --val-fraction)")
            assert self.val_labels is not None  # set with val_paths
            return FileImageDataset(self.val_paths, self.val_labels, transform, self.val_origins)
        return FileImageDataset(self.test_paths, self.test_labels, transform, self.test_origins)

    @property
    def val_size(self) -> int:
        return 0 if self.val_paths is None else len(self.val_paths)

    @property
    def val_cls_num_list(self) -> list[int]:
        if self.val_labels is None:
            return []
        return torch.bincount(self.val_labels, minlength=self.num_classes).tolist()

    @property
    def train_size(self) -> int:
        return len(self.train_paths)

    @property
    def test_size(self) -> int:
        return len(self.test_paths)

    def train_source(self, batch_size: int, seed: int, device: torch.device,
                     class_weights: torch.Tensor | None = None, *, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> BatchSource:
        from ltsam.data.streaming import EpochSampler, LoaderBatchSource, train_transform

        ds = self.files("train", train_transform(self.image_size, self.mean, self.std))
        sampler = EpochSampler(len(ds), seed, _per_sample(class_weights, self.train_labels), rank, world)
        return LoaderBatchSource(ds, batch_size, sampler, workers, device, channels_last)

    def labels(self, split: str) -> torch.Tensor:
        """The (re-mapped) labels of the ``train`` or ``test`` list."""
        return self.train_labels if split == "train" else self.test_labels

    def decode(self, split: str, indices: list[int], augment: bool = False, seed: int = 0,
               workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at ``indices`` of one list as one normalised float tensor, with their labels.

        The test transform (resize, centre crop), or with ``augment`` one draw of the training
        augmentation seeded by ``seed`` (for the Hessian analysis, which needs fixed inputs).
        """
        from torch.utils.data import DataLoader, Subset

        from ltsam.data.streaming import test_transform, train_transform, worker_errors

        make = train_transform if augment else test_transform
        ds = Subset(self.files(split, make(self.image_size, self.mean, self.std)), list(indices))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = DataLoader(ds, batch_size=64, num_workers=workers,
                                generator=torch.Generator().manual_seed(seed))
            empty = ((torch.empty(0, 3, self.image_size, self.image_size),), (torch.empty(0, dtype=torch.long),))
            xs, ys = zip(*worker_errors(loader)) if len(ds) else empty
        return torch.cat(xs), torch.cat(ys)

    def test_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        return self._eval_batches("test", batch_size, device, workers, rank, world)

    def val_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                    workers: int = 0, rank: int = 0, world: int = 1) -> Batches:
        """The held-out validation images, with the test transform."""
        return self._eval_batches("val", batch_size, device, workers, rank, world)

    def _eval_batches(self, split: str, batch_size: int, device: torch.device, workers: int, rank: int,
                      world: int) -> Batches:
        from ltsam.data.streaming import loader_batches, test_transform

        ds = self.files(split, test_transform(self.image_size, self.mean, self.std))
        indices = range(rank, len(ds), world) if world > 1 else None
        return loader_batches(ds, batch_size, workers, device, indices)


class LTData(Protocol):
    """What every data set offers (``InMemoryLTData`` and ``StreamingLTData`` both): the one data-set interface."""

    streaming: ClassVar[bool]
    name: str
    classes: list[str]
    cls_num_list: list[int]
    val_note: str

    @property
    def num_classes(self) -> int: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def train_size(self) -> int: ...
    @property
    def test_size(self) -> int: ...
    @property
    def val_size(self) -> int: ...
    @property
    def val_cls_num_list(self) -> list[int]: ...

    def train_source(self, batch_size: int, seed: int, device: torch.device,
                     class_weights: torch.Tensor | None = None, *, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> BatchSource: ...
    def test_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                     workers: int = 0, rank: int = 0, world: int = 1) -> Batches: ...
    def val_batches(self, batch_size: int, device: torch.device, channels_last: bool = False,
                    workers: int = 0, rank: int = 0, world: int = 1) -> Batches: ...
