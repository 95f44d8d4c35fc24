"""Learning-rate, rho and DRW schedules, scaled from the reference's native epoch counts.

At the native length (200 epochs for CIFAR) every boundary equals the reference's; for other
lengths each boundary epoch scales proportionally, rounded to the nearest epoch (at least 1).
Epoch arguments are 0-indexed; the reference compares the 1-indexed ``e = epoch + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ltsam.registry import Registry, Settings

CIFAR_NATIVE_EPOCHS = 200
LR_SCHEDULES: Registry[Callable[[int, float, int], float]] = Registry("LR schedule", "lr_schedule")
"""LR schedules by name: ``obj(epoch, base_lr, epochs) -> lr`` for a 0-indexed epoch."""
RHO_SCHEDULES: Registry[Callable[..., float]] = Registry("rho schedule", "rho_schedule")
"""SAM-radius schedules by name: ``obj(epoch, epochs, rho, min_rho, max_rho, rho_steps, rho_step_epochs)``."""


@dataclass(frozen=True)
class NativeSchedule:
    """A reference schedule: its length and the epochs at which things switch, each moved to a run of
    another length by :meth:`at` (the one place those epochs are written down)."""

    epochs: int
    drw: int  # 0-indexed: DRW's re-weighting starts at this epoch
    rho_steps: tuple[int, int, int]  # 1-indexed: the step rho schedule switches after these epochs

    def at(self, mark: int, epochs: int) -> int:
        """``mark`` (an epoch of this schedule) in a run of ``epochs`` epochs."""
        return scale_epoch(mark, epochs, self.epochs)

    def rho_boundaries(self, epochs: int) -> tuple[int, int, int]:
        """The step rho schedule's 1-indexed switch epochs in a run of ``epochs`` epochs."""
        a, b, c = (self.at(m, epochs) for m in self.rho_steps)
        return a, b, c


# The reference CIFAR script's 200 epochs, and the ImageNet-LT / iNaturalist scripts' 90 (their step rho
# switches after epochs 5, 60, 75; DRW at 60).
CIFAR_SCHEDULE = NativeSchedule(CIFAR_NATIVE_EPOCHS, 160, (5, 160, 180))
IMAGENET_SCHEDULE = NativeSchedule(90, 60, (5, 60, 75))
# The step LR schedule is the CIFAR script's on any data set (the ImageNet-LT / iNat scripts have none of their
# own: cosine, or a constant LR), its epochs of CIFAR_SCHEDULE's 200, 1-indexed: the LR warms up over the first
# STEP_LR_WARMUP epochs and drops x0.01 after the first of STEP_LR_DROPS, x0.0001 after the second.
STEP_LR_WARMUP = 5
STEP_LR_DROPS = (160, 180)


def scale_epoch(native_epoch: int, epochs: int, native_total: int = CIFAR_NATIVE_EPOCHS) -> int:
    """A boundary at ``native_epoch`` of ``native_total`` moved to a run of ``epochs`` epochs."""
    if epochs == native_total:
        return native_epoch
    return max(1, int(round(native_epoch * epochs / native_total)))


@LR_SCHEDULES.register("step", help="reference CIFAR: warm-up, x0.01 at 160, x0.0001 at 180 of 200")
def step_lr(epoch: int, base_lr: float, epochs: int, warmup: int | None = None,
            milestones: tuple[int, int] | None = None) -> float:
    """The reference's CIFAR schedule: linear warm-up to ``base_lr`` over 5 epochs, x0.01 after
    epoch 160, x0.0001 after 180 (1-indexed, of 200); boundaries scaled for other lengths."""
    e = epoch + 1
    w = CIFAR_SCHEDULE.at(STEP_LR_WARMUP, epochs) if warmup is None else warmup
    m1, m2 = milestones if milestones is not None else (CIFAR_SCHEDULE.at(m, epochs) for m in STEP_LR_DROPS)
    if w > 0 and e <= w:
        return base_lr * e / w
    if e <= m1:
        return base_lr
    if e <= m2:
        return base_lr * 0.01
    return base_lr * 0.0001


@LR_SCHEDULES.register("cosine", help="cosine annealing per epoch")
def cosine_lr(epoch: int, base_lr: float, epochs: int, eta_min: float = 0.0) -> float:
    """CosineAnnealingLR stepped once per epoch: eta_min + (lr - eta_min)(1 + cos(pi e / E)) / 2."""
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


# Menon et al.'s CIFAR-LT schedule (google-research/logit_adjustment): (epoch, multiplier) over 1241 epochs
# of CIFAR-10-LT; CIFAR-100-LT's 1419 epochs put its boundaries at the same fractions of the run.
_LA_NATIVE = 1241
_LA_WARMUP = 20
_LA_DROPS = ((604, 0.1), (926, 0.01), (1128, 0.001))


@LR_SCHEDULES.register("la", help="logit adjustment's: warm-up over 20 of 1241 epochs, x0.1 / x0.01 / x0.001 "
                                  "at 604 / 926 / 1128, scaled")
def la_lr(epoch: int, base_lr: float, epochs: int) -> float:
    """Menon et al.'s step schedule, per epoch: linear warm-up to ``base_lr`` over the first 20/1241 of the
    run, then x0.1, x0.01, x0.001 from 604/1241, 926/1241, 1128/1241 of it (0-indexed ``epoch``; at 1241
    and 1419 epochs these are the CIFAR-10-LT and CIFAR-100-LT boundaries of the released code)."""
    e = epoch + 1
    warmup = max(1, int(_LA_WARMUP * epochs / _LA_NATIVE + 1e-9))
    if e <= warmup:
        return base_lr * e / warmup
    lr = base_lr
    for start, mult in _LA_DROPS:
        if epoch >= int(round(start * epochs / _LA_NATIVE)):
            lr = base_lr * mult
    return lr


def learning_rate(schedule: str, epoch: int, base_lr: float, epochs: int) -> float:
    """The LR of a 0-indexed epoch under a registered schedule."""
    return LR_SCHEDULES.get(schedule)(epoch, base_lr, epochs)


def rho_for_epoch(schedule: str, epoch: int, epochs: int, rho: float, *, min_rho: float = 0.05,
                  max_rho: float = 0.8, rho_steps: tuple[float, ...] | None = None,
                  rho_step_epochs: tuple[int, int, int] | None = None) -> float:
    """SAM radius for a 0-indexed epoch under a registered rho schedule."""
    return RHO_SCHEDULES.get(schedule)(epoch, epochs, rho, min_rho, max_rho, rho_steps, rho_step_epochs)


@RHO_SCHEDULES.register("none", help="constant --rho")
def constant_rho(epoch: int, epochs: int, rho: float, *_: object) -> float:
    return rho


@RHO_SCHEDULES.register("linear", help="--min-rho to --max-rho over the run (float16, as the reference)")
def linear_rho(epoch: int, epochs: int, rho: float, min_rho: float = 0.05, max_rho: float = 0.8,
               *_: object) -> float:
    """Interpolation from (1, min_rho) to (epochs, max_rho) at e = epoch + 1, cast to float16 as the
    reference does."""
    value = min_rho if epochs == 1 else np.interp(epoch + 1, [1, epochs], [min_rho, max_rho])
    return float(np.float16(value))


STEP_RHO_DEFAULT = [0.05, 0.1, 0.5, 0.6]  # the reference CIFAR script's hard-coded step rho values


def _resolve_step_rho(cfg: Settings) -> None:
    if cfg.rho_steps is None:
        cfg.rho_steps = list(STEP_RHO_DEFAULT)


@RHO_SCHEDULES.register("step", help="--rho-steps a b c d after epochs 5, 160, 180 of 200", resolve=_resolve_step_rho)
def step_rho(epoch: int, epochs: int, rho: float, min_rho: float = 0.05, max_rho: float = 0.8,
             rho_steps: tuple[float, ...] | None = None, rho_step_epochs: tuple[int, int, int] | None = None) -> float:
    """Values (a, b, c, d) switching after the 1-indexed boundary epochs (5, 160, 180) of 200 — the
    CIFAR script's hard-coded (0.05, 0.1, 0.5, 0.6) unless ``rho_steps`` gives others;
    ``rho_step_epochs`` overrides the boundaries (the ImageNet/iNat scripts use 5, 60, 75 of 90)."""
    e = epoch + 1
    a, b, c, d = rho_steps if rho_steps is not None else STEP_RHO_DEFAULT
    b1, b2, b3 = rho_step_epochs if rho_step_epochs is not None else (
        CIFAR_SCHEDULE.at(m, epochs) for m in CIFAR_SCHEDULE.rho_steps)
    if e <= b1:
        return a
    if e <= b2:
        return b
    if e <= b3:
        return c
    return d
