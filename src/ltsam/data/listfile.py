"""Data sets described by list files (``relative/path label`` per line), as ImageNet-LT and
iNaturalist-2018 are distributed.

Labels are re-mapped by descending training count, as the reference does, so label 0 is the most
frequent class and ``cls_num_list`` is non-increasing. Ties are broken by the original label id
(ascending) — a stable order, where the reference's unstable numpy sort leaves it unspecified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltsam.errors import UserError

LIST_FILES = {
    "imagenet_lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt"),
    "inat18": ("iNaturalist18_train.txt", "iNaturalist18_val.txt"),
}
# The reference's head/medium/tail boundaries as index ranges of the frequency-sorted labels.
INDEX_SPLITS = {"imagenet_lt": (390, 835), "inat18": (842, 4543)}


@dataclass
class ListSamples:
    paths: list[Path]
    labels: np.ndarray  # int64, original ids
    origins: list[str]  # "list_file:line" of each sample, for error messages


def read_list(list_file: Path, root: Path, check_files: bool = True) -> ListSamples:
    """Parse ``relative/path label`` lines (blank lines and ``#`` comments skipped)."""
    if not list_file.is_file():
        raise UserError(f"list file {list_file} does not exist; pass --train-list/--test-list or "
                        f"put it under --data-root")
    paths: list[Path] = []
    labels: list[int] = []
    origins: list[str] = []
    with open(list_file) as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise UserError(f"{list_file}:{lineno}: expected '<relative image path> <integer label>', "
                                f"got {text[:80]!r}")
            label = int(parts[1])
            if label < 0:
                raise UserError(f"{list_file}:{lineno}: label {label} is negative; labels are 0..C-1")
            paths.append(root / parts[0])
            labels.append(label)
            origins.append(f"{list_file}:{lineno}")
    if not paths:
        raise UserError(f"list file {list_file} has no samples")
    if check_files:
        for p, origin in zip(paths, origins):
            if not p.is_file():
                raise UserError(f"image {p} (listed at {origin}) does not exist; check --data-root")
    return ListSamples(paths, np.asarray(labels, dtype=np.int64), origins)


def frequency_order(train_labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(old -> new label map, counts in new order); new label 0 is the most frequent class."""
    num_classes = int(train_labels.max()) + 1
    counts = np.bincount(train_labels, minlength=num_classes)
    if (counts == 0).any():
        missing = np.where(counts == 0)[0][:5].tolist()
        raise UserError(f"training list has no images of label(s) {missing}; labels must be 0..C-1 "
                        f"with every class present")
    order = np.argsort(-counts, kind="stable")  # new -> old
    mapping = np.empty(num_classes, dtype=np.int64)
    mapping[order] = np.arange(num_classes)
    return mapping, counts[order].tolist()


def remap(samples: ListSamples, mapping: np.ndarray, list_file: Path) -> np.ndarray:
    bad = samples.labels >= len(mapping)
    if bad.any():
        i = int(np.where(bad)[0][0])
        raise UserError(f"{list_file}: label {samples.labels[i]} is out of range: the training list has "
                        f"{len(mapping)} classes (0..{len(mapping) - 1})")
    return mapping[samples.labels]
