"""What the per-step benchmarks (train_step.py, sam_variants.py, train_epoch.py, resnet50_pipeline.py) share: their
command line, the CIFAR-10-LT class counts and the supervised update they time. Imported by those scripts as a
sibling module (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ltsam.objectives import supervised_objective
from ltsam.optim import Step, StepSettings, build_step

T = TypeVar("T")
COUNTS = [int(5000 * 0.01 ** (c / 9)) for c in range(10)]  # CIFAR-10-LT, imbalance 0.01: 5000 ... 50


def step_parser(doc: str | None, steps: int, steps_help: str) -> argparse.ArgumentParser:
    """--steps, --rounds, --batch-size and --device (CUDA when there is one)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--steps", type=int, default=steps, help=steps_help)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def interleaved(runs: dict[str, tuple[Any, Any]], x: torch.Tensor, y: torch.Tensor, criterion: Any, rounds: int,
                timer: Callable[[Any, Any], T]) -> dict[str, list[T]]:
    """Two warm-up steps of each ``(model, step)``, then ``rounds`` rounds that time each in turn with
    ``timer(step, model)`` (interleaving spreads the machine's load drift over every run alike)."""
    for model, step in runs.values():
        for _ in range(2):
            step(model, x, y, criterion)
    times: dict[str, list[T]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, step) in runs.items():
            times[name].append(timer(step, model))
    return times


class SupervisedUpdate:
    """``(model, x, y, criterion) -> (detached loss, detached logits)``: the registered step on the supervised
    objective, exactly as ``ERMMethod`` calls it in training."""

    def __init__(self, step: Step):
        self.step = step

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        objective = supervised_objective(x, y, criterion, self.step.autocast, self.step.needs_per_sample)
        out = self.step(model, objective).last
        return out.report.detach(), out.logits.detach()


def supervised_update(model: nn.Module, name: str, *, lr: float, momentum: float, wd: float, rho: float,
                      **kwargs: Any) -> SupervisedUpdate:
    """The step ``name`` (``sgd``, ``sam``, ``imbsam`` ...) over ``model``'s parameters, as a supervised update."""
    config = kwargs.pop("config", None)
    settings = StepSettings(lr=lr, momentum=momentum, wd=wd, rho=rho, **kwargs)
    return SupervisedUpdate(build_step(name, model.parameters(), settings, config=config))
