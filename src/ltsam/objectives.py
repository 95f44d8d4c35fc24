"""Objectives: what an ``ltsam.optim`` step minimises on one batch, a function of the model giving its
``StepLosses``. The plain supervised objective is the criterion on the model's logits (in ``autocast`` when
given); the accumulated one (``--accumulate K``) evaluates it in K micro-batches; GLMC's is in
``ltsam.glmc.objective``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.losses import per_sample_losses
from ltsam.optim import StepLosses
from ltsam.optim.steps import mark_accumulated


def for_loss(logits: torch.Tensor) -> torch.Tensor:
    """Logits as the loss reads them: half-precision ones (autocast) in float32, float32 and float64 as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def supervised_objective(x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                         autocast: Callable = contextlib.nullcontext,
                         per_sample: bool = False) -> Callable[[nn.Module], StepLosses]:
    """The objective criterion(model(x), y), the same loss for SAM's ascent and for the descent;
    ``per_sample`` adds ``criterion.per_sample`` (for steps that split the loss by class)."""
    def objective(model: nn.Module) -> StepLosses:
        with autocast():
            logits = model(x)
            full = for_loss(logits)
            loss = criterion(full, y)
            losses = per_sample_losses(criterion, full, y) if per_sample else None
        return StepLosses(loss, loss, loss, logits, y, losses)

    return objective


def accumulated_objective(x: torch.Tensor, y: torch.Tensor, criterion: nn.Module, parts: int,
                          backward: Callable[[torch.Tensor], None],
                          autocast: Callable = contextlib.nullcontext) -> Callable[[nn.Module], StepLosses]:
    """criterion(model(x), y) evaluated in ``parts`` micro-batches (``torch.tensor_split``: sizes differ by at most
    one), each one's forward and ``backward`` in turn, so one micro-batch's activations are in memory at a time.

    The batch's loss is the weighted mean sum_i w_i l_i / sum_i w_i (``criterion.mean_weights``: its class weights
    for the cross-entropy family, 1 for focal's plain mean), so micro-batch m's loss enters with the share
    W_m / W of the weights it holds: the gradients left in ``.grad`` are those of the whole batch's loss, up to
    rounding. Batch-norm layers see micro-batches (their statistics are the micro-batches'): with them the sum is
    that of K smaller batches, not one larger. The returned losses are marked (``mark_accumulated``): the step
    takes no backward pass of its own, and a SAM step perturbs along the accumulated gradient, once per batch.
    """
    fn = getattr(criterion, "mean_weights", None)
    if fn is None:
        raise UserError(f"--accumulate weighs micro-batches by the loss's per-sample weights; "
                        f"{type(criterion).__name__} has no mean_weights(targets) method (add one)")

    def objective(model: nn.Module) -> StepLosses:
        weights = fn(y)  # the loss's own weights, in their dtype (a float64 check stays float64)
        total = weights.sum()
        logits: list[torch.Tensor] = []
        loss: torch.Tensor | float = 0.0
        for xm, ym, wm in zip(x.tensor_split(parts), y.tensor_split(parts), weights.tensor_split(parts)):
            if len(ym) == 0:  # a last batch smaller than K
                continue
            with autocast():
                out = model(xm)
                part = criterion(for_loss(out), ym)
                part = part * (wm.sum().to(part.dtype) / total.to(part.dtype))  # the share, in the loss's dtype
            backward(part)
            logits.append(out.detach())
            loss = loss + part.detach()
        marked = mark_accumulated(torch.as_tensor(loss))
        return StepLosses(marked, marked, marked, torch.cat(logits), y)

    return objective
