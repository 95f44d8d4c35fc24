"""Supervised steps on (x, y) batches: ``step(model, x, y, criterion) -> (loss, logits)``.

The update itself is an ``ltsam.optim`` step; this module gives it the plain supervised objective
(the criterion on the model's logits, in ``autocast`` when given) and reports what the reference
logs: SAM's second (perturbed) pass, SGD's only pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ltsam.losses import per_sample_losses
from ltsam.optim import Step, StepLosses, build_step


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


class SupervisedStep:
    """``(model, x, y, criterion) -> (detached loss, detached logits)`` through an ``ltsam.optim`` step."""

    def __init__(self, step: Step):
        self.step = step

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.step(model, supervised_objective(x, y, criterion, self.step.autocast,
                                                    self.step.needs_per_sample)).last
        return out.report.detach(), out.logits.detach()


def build_optimizer(model: nn.Module, use_sam: bool, lr: float, momentum: float, wd: float,
                    rho: float, adaptive: bool = False, autocast: Callable = contextlib.nullcontext,
                    scaler: torch.amp.GradScaler | None = None, name: str | None = None,
                    config: Any = None, cls_num_list: Any = None) -> tuple[torch.optim.Optimizer, SupervisedStep]:
    """SGD (momentum, weight decay on all parameters, as the reference) or SAM around it; ``name``
    picks any registered step (default: ``sam`` when ``use_sam`` else ``sgd``); ``cls_num_list``: the
    class counts, for the steps that weight or perturb per class."""
    step = build_step(name or ("sam" if use_sam else "sgd"), model.parameters(), lr, momentum, wd, rho, adaptive,
                      autocast, scaler, config, cls_num_list=cls_num_list)
    return step.optimizer, SupervisedStep(step)
