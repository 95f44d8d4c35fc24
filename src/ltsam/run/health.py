"""A run that diverged: stopped before its checkpoint is written, so that ``last.pt`` stays finite."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ltsam.errors import TrainingDiverged
from ltsam.run.files import LAST


def check_finite(state: Iterable[torch.Tensor], epoch: int, *, bad_steps: int, first_bad: int, steps: int,
                 loss_scaled: bool, world: int, run_dir: Path, lr: float, rho: float = 0.0) -> None:
    """Raise ``TrainingDiverged`` after an epoch whose weights, batch-norm statistics (``state``: the model's
    ``state_dict`` values) or loss are not finite.

    A non-finite loss stops the run, except under fp16 loss scaling (``loss_scaled``), where the scaler skips
    an overflowing step: there only an epoch that is non-finite throughout counts as divergence. ``rho``: the
    epoch's SAM radius (0 without SAM), named beside the learning rate as the other likely cause.
    """
    floats = [t for t in state if t.is_floating_point()]
    weights_ok = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())
    if weights_ok and (bad_steps == 0 or (loss_scaled and bad_steps < steps * world)):
        return
    what = (f"the loss became non-finite at epoch {epoch + 1}, step {first_bad + 1} of {steps} "
            f"({bad_steps} non-finite steps)" if first_bad >= 0 else
            f"the weights or batch-norm statistics became non-finite in epoch {epoch + 1}")
    kept = (f"the last finite checkpoint, {run_dir / LAST} (epoch {epoch}), is kept" if epoch > 0
            else "no checkpoint was written")
    radius = f", a smaller SAM radius --rho (this epoch {rho:g})" if rho else ""
    raise TrainingDiverged(f"training diverged: {what}; {kept}. Start again with a smaller --lr "
                           f"(now {lr:g}){radius} or check the data")
