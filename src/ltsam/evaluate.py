"""Evaluation over batches of a test set: top-1/5, per-class and shot-group accuracy.

With a distributed context each rank evaluates its shard and the counts are summed across ranks.
``evaluate_offsets`` scores several per-class logit offsets in one pass over the data (post-hoc
logit adjustment's tau sweep: one forward pass, one confusion matrix per tau).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltsam.distributed import DistContext, all_reduce_sum
from ltsam.metrics import confusion_matrix, group_accuracy, index_groups, topk_correct

if TYPE_CHECKING:
    from ltsam.config import TrainConfig


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             cls_num_list: Sequence[int], criterion: nn.Module | None = None,
             ctx: DistContext | None = None, groups: dict[str, list[int]] | None = None,
             autocast=None) -> tuple[dict[str, Any], torch.Tensor]:
    """Returns (results, confusion matrix). The model is put in eval mode and left there.

    ``groups`` overrides the many/medium/few split (e.g. the reference's index ranges).
    """
    results, conf = evaluate_offsets(model, batches, cls_num_list, [None], criterion, ctx, groups, autocast)[0]
    assert conf is not None  # confusion=True
    return results, conf


@torch.no_grad()
def evaluate_offsets(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     cls_num_list: Sequence[int], offsets: Sequence[torch.Tensor | None],
                     criterion: nn.Module | None = None, ctx: DistContext | None = None,
                     groups: dict[str, list[int]] | None = None, autocast=None,
                     confusion: bool = True) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
    """(results, confusion matrix) of the predictions argmax_c (z_c + offset_c), one per offset.

    ``None`` is the plain model. The loss (given ``criterion``) is always that of the raw logits z.
    ``confusion=False`` keeps per-class hit counts only (a sweep over 8,142 iNaturalist classes would
    otherwise hold a 66-million-entry matrix per offset) and returns None for the matrices.
    """
    model.eval()
    c = len(cls_num_list)
    k = len(offsets)
    confs = torch.zeros(k, c, c, dtype=torch.long) if confusion else None
    hits = torch.zeros(k, c, dtype=torch.long)  # correct predictions per true class
    totals = torch.zeros(c, dtype=torch.long)
    hits5 = torch.zeros(k, dtype=torch.float64)
    sums = torch.zeros(2, dtype=torch.float64)  # loss sum, count
    for x, y in batches:
        if autocast is not None:
            with autocast():
                logits = model(x).float()
        else:
            logits = model(x).float()
        y_cpu = y.cpu()
        totals += torch.bincount(y_cpu, minlength=c)
        for i, offset in enumerate(offsets):
            z = logits if offset is None else logits + offset.to(logits.device, logits.dtype)
            pred = z.argmax(1).cpu()
            hits[i] += torch.bincount(y_cpu[pred == y_cpu], minlength=c)
            if confs is not None:
                confs[i] += confusion_matrix(pred, y_cpu, c)
            hits5[i] += topk_correct(z, y, (5,))[0]
        if criterion is not None:
            sums[0] += float(criterion(logits, y)) * len(y)
        sums[1] += len(y)
    if ctx is not None and ctx.enabled:
        device = next(model.parameters()).device
        if confs is not None:
            confs = all_reduce_sum(confs.to(device), ctx).cpu()
        hits = all_reduce_sum(hits.to(device), ctx).cpu()
        totals = all_reduce_sum(totals.to(device), ctx).cpu()
        hits5 = all_reduce_sum(hits5.to(device), ctx).cpu()
        sums = all_reduce_sum(sums.to(device), ctx).cpu()
    n = max(float(sums[1]), 1.0)
    out = []
    for i in range(k):
        class_acc = [None if int(t) == 0 else 100.0 * float(h) / float(t) for h, t in zip(hits[i], totals)]
        result = {
            "top1": 100.0 * float(hits[i].sum()) / n,
            "top5": 100.0 * float(hits5[i]) / n,
            "per_class_acc": class_acc,
            "shot_acc": group_accuracy(class_acc, cls_num_list, groups),
        }
        if criterion is not None:
            result["loss"] = float(sums[0]) / n
        out.append((result, None if confs is None else confs[i]))
    return out


def shot_split_groups(cfg: TrainConfig, num_classes: int) -> dict[str, list[int]] | None:
    """The many/medium/few split a run's configuration asks for: None (by training counts) or the
    reference's index ranges (``--shot-split index``)."""
    if getattr(cfg, "shot_split", "counts") != "index":
        return None
    from ltsam.data.catalog import DATASETS

    return index_groups(num_classes, DATASETS.entry(cfg.dataset).meta["index_split"])
