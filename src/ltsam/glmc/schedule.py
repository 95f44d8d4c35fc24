"""GLMC's learning-rate schedule, registered as ``--lr-schedule glmc``."""

from __future__ import annotations

import math

from ltsam.schedules import LR_SCHEDULES


@LR_SCHEDULES.register("glmc", help="GLMC's ImageNet-LT/iNat warm-up + cosine")
def glmc_lr(epoch: int, base_lr: float, epochs: int) -> float:
    """GLMC's ImageNet-LT / iNat schedule, applied after each epoch e to set the LR of epoch e + 1:
    e <= 10: base (e + 1) / 10, else base (1 + cos(pi (e - 9) / (epochs - 9))) / 2. Epoch 0 runs at
    the full base LR and epoch 11 at 1.1 base (kept as the reference does it)."""
    if epoch == 0:
        return base_lr
    e = epoch - 1
    if e <= 10:
        return base_lr * (e + 1) / 10
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (e - 9) / (epochs - 9)))
