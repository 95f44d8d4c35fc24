"""The data-set registry: ``DATASETS`` by name, the ``DataRequest`` every loader receives, and what an entry
declares (its defaults, native schedule length, index-based shot split)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltsam.registry import Registry
from ltsam.schedules import CIFAR_SCHEDULE, IMAGENET_SCHEDULE, NativeSchedule


@dataclass(kw_only=True)
class DataRequest:
    """Everything a data-set loader may use, from the run's configuration (built by keyword only)."""

    root: Path
    imb_type: str = "exp"
    imb_factor: float = 0.01
    rand_number: int = 0
    download: bool = False
    image_size: int | None = None
    norm: str | None = None
    pad: int | None = None
    flip: bool | None = None
    train_list: str | None = None
    test_list: str | None = None
    lt_generator: str = "standard"
    seed: int = 0
    val_per_class: int = 0  # images per class held out for validation (ltsam.data.validation)
    val_fraction: float = 0.0
    val_list: str | None = None  # list-file sets: a list file of validation images (not held out of training)


DATASETS: Registry[Callable[[DataRequest], Any]] = Registry("data set", "dataset")
"""Data sets by name: ``obj(request: DataRequest) -> InMemoryLTData | StreamingLTData``.

Each entry's ``meta`` holds its defaults: ``defaults`` (config values, e.g. the architecture),
``native_epochs`` (the reference schedule length whose boundaries scale: 200 or 90) and, for the
reference's index-based shot split, ``index_split`` (head/medium/tail boundaries); ``needs_root``: it reads
files under ``--data-root`` (checked before a sweep starts)."""


def native_epochs(dataset: str) -> int:
    """Length of the reference schedule whose boundaries ltsam scales: 90 (ImageNet-LT, iNat) or 200."""
    return DATASETS.entry(dataset).meta.get("native_epochs", 200) if dataset in DATASETS else 200


def native_schedule(dataset: str) -> NativeSchedule:
    """The data set's reference schedule: its registration's ``schedule``, else the CIFAR one for a 200-epoch
    set and the ImageNet-LT / iNat one (its switch epochs, at the set's own length) for any other."""
    meta = DATASETS.entry(dataset).meta if dataset in DATASETS else {}
    if "schedule" in meta:
        return meta["schedule"]
    native = native_epochs(dataset)
    return CIFAR_SCHEDULE if native == CIFAR_SCHEDULE.epochs else dataclasses.replace(IMAGENET_SCHEDULE, epochs=native)
