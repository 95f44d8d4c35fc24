"""Optimizer steps by name (``--optimizer``): SGD, SAM and ASAM, each built with its optimizer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from ltsam.registry import Registry, option_kwargs
from ltsam.sam import SAM


class StepLosses(NamedTuple):
    """What one evaluation of a method's objective gives the step.

    ``ascent``: the loss whose gradient SAM's perturbation follows; ``descent``: the loss whose
    gradient updates the weights; ``report``: the loss logged for the batch (detached by the step's
    caller); ``logits`` and ``targets`` (per-sample class ids) for the training accuracy, and for
    steps that weight or perturb per class.
    """

    ascent: torch.Tensor
    descent: torch.Tensor
    report: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


class StepResult(NamedTuple):
    """The objective's values at w (``first``) and, for SAM-style steps, at w + e (``last``)."""

    first: StepLosses
    last: StepLosses


Objective = Callable[[nn.Module], StepLosses]


class Step:
    """One optimisation step on one objective. Subclasses register in ``STEPS``.

    ``perturbs`` says whether the step needs a radius (``--rho`` > 0); a step that perturbs with rho 0
    everywhere runs as plain SGD.
    """

    perturbs = False

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        self.optimizer, self.autocast, self.scaler = optimizer, autocast, scaler

    @classmethod
    def create(cls, params: Iterable[Any], lr: float, momentum: float, wd: float, rho: float = 0.0,
               adaptive: bool = False, autocast: Callable = contextlib.nullcontext,
               scaler: torch.amp.GradScaler | None = None, **options: Any) -> Step:
        """The step with its optimizer: SGD with momentum and weight decay on all parameters."""
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
        return cls(opt, autocast, scaler, **options)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Step state beyond the optimizer's, saved in checkpoints (none for SGD and SAM)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


STEPS: Registry[type[Step]] = Registry("optimizer step", "optimizer")


@STEPS.register("sgd", help="SGD with momentum")
class SGDStep(Step):
    """One forward/backward of the descent loss and one optimizer step."""

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        out = objective(model)
        self.backward(out.descent)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return StepResult(out, out)


@STEPS.register("sam", help="sharpness-aware minimisation (ASAM with --adaptive)")
class SAMStep(Step):
    """Ascent pass, ``first_step``, descent pass at the perturbed weights, restore and base step.

    Both passes run in train mode, so batch-norm running statistics are updated twice per step
    (the reference's behaviour). With fp16 loss scaling the ascent needs no unscaling (SAM's
    perturbation is scale-invariant) and an overflowed ascent leaves w unperturbed; the descent
    goes through the scaler as usual.
    """

    perturbs = True

    @classmethod
    def create(cls, params: Iterable[Any], lr: float, momentum: float, wd: float, rho: float = 0.05,
               adaptive: bool = False, autocast: Callable = contextlib.nullcontext,
               scaler: torch.amp.GradScaler | None = None, **options: Any) -> Step:
        opt = SAM(params, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr, momentum=momentum, weight_decay=wd)
        return cls(opt, autocast, scaler, **options)

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        opt: SAM = self.optimizer  # type: ignore[assignment]
        opt.zero_grad(set_to_none=True)
        first = objective(model)
        self.backward(first.ascent)
        opt.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
        last = objective(model)
        self.backward(last.descent)
        if self.scaler is None:
            opt.second_step(zero_grad=True)
        else:
            opt.restore()
            self.scaler.step(opt.base_optimizer)
            self.scaler.update()
            opt.zero_grad()
        return StepResult(first, last)


@STEPS.register("asam", help="adaptive SAM (Kwon et al., 2021): SAM with --adaptive")
class ASAMStep(SAMStep):
    """SAM with the scale-invariant (adaptive) perturbation e = rho T^2 g / ||T g||, T = |w|."""

    @classmethod
    def create(cls, params: Iterable[Any], lr: float, momentum: float, wd: float, rho: float = 0.05,
               adaptive: bool = True, autocast: Callable = contextlib.nullcontext,
               scaler: torch.amp.GradScaler | None = None, **options: Any) -> Step:
        return super().create(params, lr, momentum, wd, rho, True, autocast, scaler, **options)


def build_step(name: str, params: Iterable[Any], lr: float, momentum: float, wd: float, rho: float = 0.05,
               adaptive: bool = False, autocast: Callable = contextlib.nullcontext,
               scaler: torch.amp.GradScaler | None = None, config: Any = None) -> Step:
    """A registered step and its optimizer; the step's own options come from ``config`` (or defaults)."""
    entry = STEPS.entry(name)
    return entry.obj.create(params, lr, momentum, wd, rho, adaptive, autocast, scaler,
                            **option_kwargs(entry, config))
