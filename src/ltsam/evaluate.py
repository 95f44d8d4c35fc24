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
             ctx: DistContext | None = None, *, groups: dict[str, list[int]] | None = None,
             autocast=None) -> tuple[dict[str, Any], torch.Tensor]:
    """Returns (results, confusion matrix). The model is put in eval mode and left there.

    ``groups`` overrides the many/medium/few split (e.g. the reference's index ranges).
    """
    results, conf = evaluate_offsets(model, batches, cls_num_list, [None], criterion, ctx, groups=groups,
                                     autocast=autocast)[0]
    assert conf is not None  # confusion=True
    return results, conf


@torch.no_grad()
def evaluate_offsets(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     cls_num_list: Sequence[int], offsets: Sequence[torch.Tensor | None],
                     criterion: nn.Module | None = None, ctx: DistContext | None = None, *,
                     groups: dict[str, list[int]] | None = None, autocast=None,
                     confusion: bool = True) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
    """(results, confusion matrix) of the predictions argmax_c (z_c + offset_c), one per offset.

    ``None`` is the plain model. The loss (given ``criterion``) is always that of the raw logits z.
    ``confusion=False`` keeps per-class hit counts only (a sweep over 8,142 iNaturalist classes would
    otherwise hold a 66-million-entry matrix per offset) and returns None for the matrices.
    """
    model.eval()
    counts = EvalCounts(cls_num_list, offsets, confusion, groups, with_loss=criterion is not None)
    for x, y in batches:
        if autocast is not None:
            with autocast():
                logits = model(x).float()
        else:
            logits = model(x).float()
        counts.add(logits, y, criterion)
    return counts.results(ctx, next(model.parameters()).device if ctx is not None and ctx.enabled else None)


class EvalCounts:
    """The counts behind one model's results on a split (per-class hits, top-5 hits, loss sum), added batch
    by batch from its logits; :meth:`results` turns them into top-1/5, per-class and shot-group accuracy
    (summed over ranks first). A pack of runs keeps one per member."""

    def __init__(self, cls_num_list: Sequence[int], offsets: Sequence[torch.Tensor | None] = (None,),
                 confusion: bool = True, groups: dict[str, list[int]] | None = None, with_loss: bool = False):
        c = len(cls_num_list)
        k = len(offsets)
        self.cls_num_list, self.offsets, self.groups, self.classes = cls_num_list, offsets, groups, c
        self.confs = torch.zeros(k, c, c, dtype=torch.long) if confusion else None
        self.hits = torch.zeros(k, c, dtype=torch.long)  # correct predictions per true class
        self.totals = torch.zeros(c, dtype=torch.long)
        self.hits5 = torch.zeros(k, dtype=torch.float64)
        self.sums = torch.zeros(2, dtype=torch.float64)  # loss sum, count
        self.has_loss = with_loss  # results carry "loss" (the criterion's mean over the split)

    def add(self, logits: torch.Tensor, y: torch.Tensor, criterion: nn.Module | None = None) -> None:
        """Count in one batch: float logits (B, classes) and labels (B,)."""
        c = self.classes
        y_cpu = y.cpu()
        self.totals += torch.bincount(y_cpu, minlength=c)
        for i, offset in enumerate(self.offsets):
            z = logits if offset is None else logits + offset.to(logits.device, logits.dtype)
            pred = z.argmax(1).cpu()
            self.hits[i] += torch.bincount(y_cpu[pred == y_cpu], minlength=c)
            if self.confs is not None:
                self.confs[i] += confusion_matrix(pred, y_cpu, c)
            self.hits5[i] += topk_correct(z, y, (5,))[0]
        if criterion is not None:
            self.sums[0] += float(criterion(logits, y)) * len(y)
        self.sums[1] += len(y)

    def results(self, ctx: DistContext | None = None,
                device: torch.device | None = None) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
        """(results, confusion matrix or None) per offset; under ``ctx`` the counts are summed over ranks
        on ``device`` first."""
        confs, hits, totals, hits5, sums = self.confs, self.hits, self.totals, self.hits5, self.sums
        if ctx is not None and ctx.enabled:
            assert device is not None
            if confs is not None:
                confs = all_reduce_sum(confs.to(device), ctx).cpu()
            hits = all_reduce_sum(hits.to(device), ctx).cpu()
            totals = all_reduce_sum(totals.to(device), ctx).cpu()
            hits5 = all_reduce_sum(hits5.to(device), ctx).cpu()
            sums = all_reduce_sum(sums.to(device), ctx).cpu()
        n = max(float(sums[1]), 1.0)
        out = []
        for i in range(len(self.offsets)):
            class_acc = [None if int(t) == 0 else 100.0 * float(h) / float(t) for h, t in zip(hits[i], totals)]
            result = {
                "top1": 100.0 * float(hits[i].sum()) / n,
                "top5": 100.0 * float(hits5[i]) / n,
                "per_class_acc": class_acc,
                "shot_acc": group_accuracy(class_acc, self.cls_num_list, self.groups),
            }
            if self.has_loss:
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
