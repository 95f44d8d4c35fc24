"""Train rules: how a run re-balances, by class weights in the loss, by sampling, or both.

A rule is one class: ``class_weights(cls_num_list, epoch)`` gives the per-class loss weights of a
0-indexed epoch (None = unweighted) and ``sample_weights(cls_num_list)`` the per-class sampling
weights (None = the shuffled instance stream). Register it in ``TRAIN_RULES`` with its options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ltsam.data.catalog import native_schedule
from ltsam.losses import effective_number_weights
from ltsam.registry import Option, Registry, Settings, option_kwargs

TRAIN_RULES: Registry[type] = Registry("train rule", "train_rule")

BETA = Option("beta", float, 0.9999, "effective-number beta (default 0.9999)", minimum=0.0, below=1.0)


class TrainRule:
    """No re-balancing (the base every rule refines)."""

    def class_weights(self, cls_num_list: Sequence[int], epoch: int) -> torch.Tensor | None:
        return None

    def sample_weights(self, cls_num_list: Sequence[int]) -> torch.Tensor | None:
        return None


TRAIN_RULES.add("none", TrainRule, help="no re-balancing")


@TRAIN_RULES.register("reweight", help="effective-number class weights throughout", options=[BETA])
class Reweight(TrainRule):
    """Class-balanced loss weights (Cui et al., CVPR 2019) from the first epoch on."""

    def __init__(self, beta: float = 0.9999):
        self.beta = beta

    def class_weights(self, cls_num_list: Sequence[int], epoch: int) -> torch.Tensor | None:
        return effective_number_weights(cls_num_list, self.beta)


@TRAIN_RULES.register("resample", help="class-balanced sampling")
class Resample(TrainRule):
    """Per-class sampling weights 1 / n_c: every class is drawn equally often.

    (The reference builds an effective-number sampler but never attaches it, so its ``Resample``
    trains unbalanced; ltsam samples truly class-balanced.)
    """

    def sample_weights(self, cls_num_list: Sequence[int]) -> torch.Tensor | None:
        return 1.0 / torch.tensor(list(cls_num_list), dtype=torch.float64)


def default_drw_epoch(dataset: str, epochs: int) -> int:
    """0-indexed epoch DRW switches on when --drw-epoch is not given: 160 of 200 (CIFAR) or
    60 of 90 (ImageNet-LT, iNat), scaled to ``epochs``."""
    schedule = native_schedule(dataset)
    return schedule.at(schedule.drw, epochs)


def _resolve_drw(cfg: Settings) -> None:
    if cfg.drw_epoch is None:
        cfg.drw_epoch = default_drw_epoch(cfg.dataset, cfg.epochs)


@TRAIN_RULES.register("drw", help="deferred re-weighting: unweighted, then effective-number weights", options=[
    BETA, Option("drw_epoch", int, None, "0-indexed epoch DRW switches on (default 160 of 200, scaled)",
                 minimum=0)], resolve=_resolve_drw)
class DeferredReweight(TrainRule):
    """DRW (Cao et al., 2019): unweighted before ``drw_epoch``, effective-number weights from it on
    (the reference's betas [0, beta] indexed by epoch // T)."""

    def __init__(self, beta: float = 0.9999, drw_epoch: int | None = None):
        self.beta, self.drw_epoch = beta, drw_epoch

    def class_weights(self, cls_num_list: Sequence[int], epoch: int) -> torch.Tensor | None:
        if self.drw_epoch is None:
            raise ValueError("DRW needs drw_epoch (config.resolve_derived fills it in)")
        return effective_number_weights(cls_num_list, self.beta) if epoch >= self.drw_epoch else None


def build_rule(name: str, config: Settings | None = None, **kwargs: Any) -> TrainRule:
    """A registered train rule by name, its options from ``config`` (else their defaults) or ``kwargs``."""
    entry = TRAIN_RULES.entry(name)
    return entry.obj(**(option_kwargs(entry, config) | kwargs))


def class_weights_for_epoch(rule: str, cls_num_list: Sequence[int], epoch: int, drw_epoch: int,
                            beta: float = 0.9999) -> torch.Tensor | None:
    """Per-class loss weights of a built-in train rule at a 0-indexed epoch (None = unweighted)."""
    entry = TRAIN_RULES.entry(rule)
    given = {"beta": beta, "drw_epoch": drw_epoch}
    return entry.obj(**{o.keyword: given[o.name] for o in entry.options}).class_weights(cls_num_list, epoch)
