"""What changes from one epoch of a training run to the next: the learning rate, SAM's radius, the
criterion (the train rule's class weights, e.g. DRW's switch) and whether the epoch is evaluated. One
definition, read by the trainer and by a pack of runs alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ltsam.data.catalog import native_schedule
from ltsam.losses import build_loss
from ltsam.rules import build_rule
from ltsam.schedules import learning_rate, rho_for_epoch

if TYPE_CHECKING:
    from ltsam.config import TrainConfig
    from ltsam.data.lt_data import LTData


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-indexed) under the run's ``--lr-schedule``."""
    return learning_rate(cfg.lr_schedule, epoch, cfg.lr, cfg.epochs)


def epoch_rho(cfg: TrainConfig, epoch: int) -> float:
    """SAM's radius in ``epoch`` under the run's ``--rho-schedule`` (the step schedule's boundaries are the
    data set's native ones, scaled to the run's length)."""
    steps = native_schedule(cfg.dataset).rho_boundaries(cfg.epochs)
    return rho_for_epoch(cfg.rho_schedule, epoch, cfg.epochs, cfg.rho, min_rho=cfg.min_rho,
                         max_rho=cfg.max_rho, rho_steps=tuple(cfg.rho_steps) if cfg.rho_steps else None,
                         rho_step_epochs=steps)


def evaluated(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-indexed) ends with an evaluation under ``--eval-every K``: every K-th epoch, and every
    epoch of the last 10 % (at least the last one), where the best epoch and the final one are looked for.
    K = 1 evaluates every epoch."""
    last_tenth = cfg.epochs - max(1, -(-cfg.epochs // 10))  # the first epoch of the last ceil(10 %)
    return (epoch + 1) % cfg.eval_every == 0 or epoch >= last_tenth


def epoch_criterion(cfg: TrainConfig, data: LTData, epoch: int, device: torch.device) -> torch.nn.Module:
    """The loss of ``epoch``: the run's ``--loss`` with the class weights its ``--train-rule`` gives then."""
    weights = build_rule(cfg.train_rule, cfg).class_weights(data.cls_num_list, epoch)
    return build_loss(cfg.loss, data.cls_num_list, weights, config=cfg).to(device)
