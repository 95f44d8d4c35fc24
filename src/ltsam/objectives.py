"""Objectives: what an ``ltsam.optim`` step minimises on one batch, a function of the model giving its
``StepLosses``. The plain supervised objective is the criterion on the model's logits (in ``autocast`` when
given); GLMC's is in ``ltsam.glmc.objective``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ltsam.losses import per_sample_losses
from ltsam.optim import StepLosses


def supervised_objective(x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                         autocast: Callable = contextlib.nullcontext,
                         per_sample: bool = False) -> Callable[[nn.Module], StepLosses]:
    """The objective criterion(model(x), y), the same loss for SAM's ascent and for the descent;
    ``per_sample`` adds ``criterion.per_sample`` (for steps that split the loss by class)."""
    def objective(model: nn.Module) -> StepLosses:
        with autocast():
            logits = model(x)
            full = logits.float()
            loss = criterion(full, y)
            losses = per_sample_losses(criterion, full, y) if per_sample else None
        return StepLosses(loss, loss, loss, logits, y, losses)

    return objective
