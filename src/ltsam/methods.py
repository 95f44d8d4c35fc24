"""Training methods: how one batch becomes one optimisation step.

``erm`` is the reference's plain (or SAM) step on (x, y) batches with the epoch's criterion;
``glmc`` is GLMC's two-stream, two-view mixture step. Each method gives the trainer its batch
source, a per-epoch ``prepare`` and a ``__call__(batch) -> (loss, logits, targets)``; the epoch
loop, evaluation, checkpoints and metrics are shared.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltsam.faults import fault_point
from ltsam.steps import build_optimizer

METHODS = ("erm", "glmc")


class ERMMethod:
    """Empirical risk minimisation with the configured loss and train rule (SGD or SAM)."""

    def __init__(self, trainer: Any):
        cfg = trainer.cfg
        self.trainer = trainer
        self.source = trainer.data.train_source(cfg.batch_size, cfg.seed, trainer.device, trainer.resample_weights(),
                                                cfg.channels_last, cfg.workers, trainer.ctx.rank, trainer.ctx.world)
        self.optimizer, self.step = build_optimizer(trainer.model, cfg.uses_sam, cfg.lr, cfg.momentum, cfg.wd,
                                                    cfg.rho, cfg.adaptive, trainer.autocast, trainer.scaler)
        self.criterion: nn.Module | None = None

    def compile_trial(self, net: nn.Module) -> None:
        x, y = next(iter(self.source))
        net.train()
        nn.functional.cross_entropy(net(x), y).backward()

    def prepare(self, epoch: int, criterion: nn.Module) -> None:
        self.criterion = criterion

    def __call__(self, net: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        loss, logits = self.step(net, x, y, self.criterion)
        fault_point("step")
        return loss, logits, y


class GLMCMethod:
    """GLMC (Du et al., CVPR 2023) with optional SAM on the re-balancing losses (SPEC §8)."""

    def __init__(self, trainer: Any):
        from ltsam.glmc import GLMCStep, label_weights, mixing_generator

        cfg, data = trainer.cfg, trainer.data
        self.trainer = trainer
        self.source = data.glmc_source(cfg.batch_size, cfg.seed, trainer.device, cfg.resample_weighting,
                                       cfg.channels_last, cfg.workers, trainer.ctx.rank, trainer.ctx.world)
        self.optimizer, _ = build_optimizer(trainer.model, cfg.uses_sam, cfg.lr, cfg.momentum, cfg.wd, cfg.rho,
                                            cfg.adaptive)
        weights = label_weights(data.cls_num_list, cfg.label_weighting).to(trainer.device)
        self.step = GLMCStep(self.optimizer, weights, data.num_classes, cfg.contrast_weight,
                             mixing_generator(cfg.seed, 0), cfg.uses_sam, beta=cfg.mix_beta,
                             autocast=trainer.autocast, scaler=trainer.scaler)
        self.alpha = 1.0

    def compile_trial(self, net: nn.Module) -> None:
        a, b = next(iter(self.source))
        net.train()
        sum(o.float().sum() for o in net(a[0])).backward()

    def prepare(self, epoch: int, criterion: nn.Module) -> None:
        from ltsam.glmc import cumulative_alpha

        self.step.reseed(self.trainer.cfg.seed, epoch)
        self.alpha = cumulative_alpha(epoch, self.trainer.cfg.epochs)

    def __call__(self, net: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_a, batch_b = batch
        out = self.step(net, batch_a, batch_b, self.alpha)
        fault_point("step")
        return out["loss"], out["logits"], out["targets"]


def build_method(name: str, trainer: Any):
    return GLMCMethod(trainer) if name == "glmc" else ERMMethod(trainer)
