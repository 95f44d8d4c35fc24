"""Evaluation over an in-memory test set in large chunks: top-1/5, per-class and shot-group accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ltsam.data.sources import eval_batches
from ltsam.metrics import confusion_matrix, group_accuracy, per_class_accuracy, topk_correct


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, cls_num_list: Sequence[int], criterion: nn.Module | None = None,
             batch_size: int = 1000, device: torch.device | str = "cpu",
             channels_last: bool = False) -> tuple[dict[str, Any], torch.Tensor]:
    """Returns (results, confusion matrix). Model is put in eval mode and left there."""
    model.eval()
    c = len(cls_num_list)
    preds, top5, loss_sum = [], 0, 0.0
    for x, y in eval_batches(images, targets, mean, std, batch_size, device, channels_last):
        logits = model(x).float()
        preds.append(logits.argmax(1).cpu())
        top5 += topk_correct(logits, y, (5,))[0]
        if criterion is not None:
            loss_sum += float(criterion(logits, y)) * len(y)
    n = len(targets)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    conf = confusion_matrix(pred, targets.cpu(), c)
    class_acc = per_class_accuracy(conf)
    result = {
        "top1": 100.0 * float(conf.diag().sum()) / max(n, 1),
        "top5": 100.0 * top5 / max(n, 1),
        "per_class_acc": class_acc,
        "shot_acc": group_accuracy(class_acc, cls_num_list),
    }
    if criterion is not None:
        result["loss"] = loss_sum / max(n, 1)
    return result, conf
