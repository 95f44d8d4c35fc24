"""Accuracy metrics: top-k, per-class accuracy, and many/medium/few-shot groups by training count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

MANY_THRESHOLD = 100  # many-shot: more than 100 training images
FEW_THRESHOLD = 20  # few-shot: fewer than 20; medium-shot: 20-100 inclusive


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C x C counts, rows = true class, columns = predicted class."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(conf: torch.Tensor) -> list[float | None]:
    """Diagonal / row sums, in percent; None for a class with no test images."""
    totals = conf.sum(1)
    return [None if int(t) == 0 else 100.0 * float(conf[c, c]) / float(t) for c, t in enumerate(totals)]


def shot_groups(cls_num_list: Sequence[int]) -> dict[str, list[int]]:
    """Class indices of the many (>100), medium (20-100) and few (<20) shot groups."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(cls_num_list):
        key = "many" if n > MANY_THRESHOLD else ("few" if n < FEW_THRESHOLD else "medium")
        groups[key].append(c)
    return groups


def index_groups(num_classes: int, boundaries: tuple[int, int]) -> dict[str, list[int]]:
    """The reference's ImageNet-LT / iNat split by index of frequency-sorted labels:
    many = [0, b1), medium = [b1, b2), few = [b2, C)."""
    b1, b2 = boundaries
    return {"many": list(range(0, b1)), "medium": list(range(b1, b2)), "few": list(range(b2, num_classes))}


def group_accuracy(class_acc: Sequence[float | None], cls_num_list: Sequence[int],
                   groups: dict[str, list[int]] | None = None) -> dict[str, float | None]:
    """Mean per-class accuracy within each shot group (None for an empty group)."""
    out: dict[str, float | None] = {}
    for name, members in (groups or shot_groups(cls_num_list)).items():
        vals = [acc for c in members if (acc := class_acc[c]) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
    return out


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at C)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(targets[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def best_record(records: Iterable[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The per-epoch record with the highest ``key`` (the earliest epoch on a tie); None if no record has it.

    Model selection: ``key="val_top1"`` picks on held-out validation images, ``"test_top1"`` on the test set.
    """
    rows = [r for r in records if r.get(key) is not None]
    return max(rows, key=lambda r: (r[key], -r["epoch"])) if rows else None
