"""Evaluation over batches of a test set: top-1/5, per-class and shot-group accuracy.

With a distributed context each rank evaluates its shard and the counts are summed across ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ltsam.distributed import DistContext, all_reduce_sum
from ltsam.metrics import confusion_matrix, group_accuracy, per_class_accuracy, topk_correct


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             cls_num_list: Sequence[int], criterion: nn.Module | None = None,
             ctx: DistContext | None = None, groups: dict[str, list[int]] | None = None,
             autocast=None) -> tuple[dict[str, Any], torch.Tensor]:
    """Returns (results, confusion matrix). The model is put in eval mode and left there.

    ``groups`` overrides the many/medium/few split (e.g. the reference's index ranges).
    """
    model.eval()
    c = len(cls_num_list)
    conf = torch.zeros(c, c, dtype=torch.long)
    sums = torch.zeros(3, dtype=torch.float64)  # top-5 hits, loss sum, count
    for x, y in batches:
        if autocast is not None:
            with autocast():
                logits = model(x).float()
        else:
            logits = model(x).float()
        conf += confusion_matrix(logits.argmax(1).cpu(), y.cpu(), c)
        sums[0] += topk_correct(logits, y, (5,))[0]
        if criterion is not None:
            sums[1] += float(criterion(logits, y)) * len(y)
        sums[2] += len(y)
    if ctx is not None and ctx.enabled:
        device = next(model.parameters()).device
        conf = all_reduce_sum(conf.to(device), ctx).cpu()
        sums = all_reduce_sum(sums.to(device), ctx).cpu()
    n = max(float(sums[2]), 1.0)
    class_acc = per_class_accuracy(conf)
    result = {
        "top1": 100.0 * float(conf.diag().sum()) / n,
        "top5": 100.0 * float(sums[0]) / n,
        "per_class_acc": class_acc,
        "shot_acc": group_accuracy(class_acc, cls_num_list, groups),
    }
    if criterion is not None:
        result["loss"] = float(sums[1]) / n
    return result, conf
