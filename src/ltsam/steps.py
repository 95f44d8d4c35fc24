"""Training steps: one optimisation step on one batch. The trainer is agnostic of which one runs.

Each step returns the (detached) loss and the logits used for the training accuracy. SAM reports
the second (perturbed) pass, as the reference logs it. ``autocast`` (a context factory) and
``scaler`` (a GradScaler, fp16 only) add mixed precision; without them the step is plain fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ltsam.sam import SAM


class Step(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]: ...


class SGDStep:
    """One forward/backward and one optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        self.optimizer, self.autocast, self.scaler = optimizer, autocast, scaler

    def __call__(self, model, x, y, criterion):
        with self.autocast():
            logits = model(x)
            loss = criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach(), logits.detach()


class SAMStep:
    """Ascent pass, ``first_step``, descent pass at the perturbed weights, restore and base step.

    Both passes run in train mode, so batch-norm running statistics are updated twice per step
    (the reference's behaviour). With fp16 loss scaling the ascent needs no unscaling (SAM's
    perturbation is scale-invariant); the descent goes through the scaler as usual.
    """

    def __init__(self, optimizer: SAM, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        self.optimizer, self.autocast, self.scaler = optimizer, autocast, scaler

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def __call__(self, model, x, y, criterion):
        with self.autocast():
            first = criterion(model(x).float(), y)
        self._backward(first)
        self.optimizer.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
        with self.autocast():
            logits = model(x)
            loss = criterion(logits.float(), y)
        self._backward(loss)
        if self.scaler is None:
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.restore()
            self.scaler.step(self.optimizer.base_optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
        return loss.detach(), logits.detach()


def build_optimizer(model: nn.Module, use_sam: bool, lr: float, momentum: float, wd: float,
                    rho: float, adaptive: bool = False, autocast: Callable = contextlib.nullcontext,
                    scaler: torch.amp.GradScaler | None = None) -> tuple[torch.optim.Optimizer, Step]:
    """SGD (momentum, weight decay on all parameters, as the reference) or SAM around it."""
    if use_sam:
        opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr,
                  momentum=momentum, weight_decay=wd)
        return opt, SAMStep(opt, autocast, scaler)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    return opt, SGDStep(opt, autocast, scaler)
