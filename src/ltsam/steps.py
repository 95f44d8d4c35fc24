"""Training steps: one optimisation step on one batch. The trainer is agnostic of which one runs.

Each step returns the (detached) loss and the logits used for the training accuracy. SAM reports
the second (perturbed) pass, as the reference logs it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ltsam.sam import SAM


class Step(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]: ...


class SGDStep:
    """One forward/backward and one optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def __call__(self, model, x, y, criterion):
        logits = model(x)
        loss = criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()


class SAMStep:
    """Ascent pass, ``first_step``, descent pass at the perturbed weights, ``second_step``.

    Both passes run in train mode, so batch-norm running statistics are updated twice per step
    (the reference's behaviour).
    """

    def __init__(self, optimizer: SAM):
        self.optimizer = optimizer

    def __call__(self, model, x, y, criterion):
        criterion(model(x), y).backward()
        self.optimizer.first_step(zero_grad=True)
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        self.optimizer.second_step(zero_grad=True)
        return loss.detach(), logits.detach()


def build_optimizer(model: nn.Module, use_sam: bool, lr: float, momentum: float, wd: float,
                    rho: float, adaptive: bool = False) -> tuple[torch.optim.Optimizer, Step]:
    """SGD (momentum, weight decay on all parameters, as the reference) or SAM around it."""
    if use_sam:
        opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr,
                  momentum=momentum, weight_decay=wd)
        return opt, SAMStep(opt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    return opt, SGDStep(opt)
