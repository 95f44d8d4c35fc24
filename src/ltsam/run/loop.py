"""The epoch loop of a run: train and evaluate through the owner's hooks, record the epoch, keep the best,
save the checkpoints, stop after ``stop_after`` epochs; and the final.json that ends a run.

The loop drives one :class:`Member` (a run folder with its records and checkpoints); the trainer and the
stage runner supply the hooks. A run of several members would drive each the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ltsam.distributed import DistContext, barrier
from ltsam.io import write_json
from ltsam.run.checkpoints import save_run_checkpoints
from ltsam.run.files import FINAL_NAME
from ltsam.run.records import MetricsLog, Progress, ScalarLog, console_line, epoch_record

if TYPE_CHECKING:
    from ltsam.data.lt_data import LTData


class EpochHooks(Protocol):
    def run_epoch(self, epoch: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Train one epoch and evaluate it: (the record's head: lr, rho, training statistics), the test
        results and the validation results (``None`` without a validation split)."""

    def payload(self, epochs_done: int) -> dict[str, Any]:
        """The checkpoint after ``epochs_done`` epochs."""


@dataclass
class Member:
    """One run the loop drives: its folder, how many epochs, where it stands, and the hooks that train it."""

    run_dir: Path
    epochs: int
    state: Progress
    hooks: EpochHooks
    label: str = ""  # before "epoch" on the console, e.g. the stage's name
    echo: bool = True  # print a line after each epoch (rank 0)
    scalars: bool = False  # TensorBoard scalars
    wandb_config: dict[str, Any] | None = None  # Weights & Biases, with this configuration


def run_epochs(member: Member, ctx: DistContext, stop_after: int | None = None) -> None:
    """Train ``member`` from its ``start_epoch`` to its last epoch, or for ``stop_after`` epochs; rank 0
    writes metrics.jsonl, the checkpoints and the scalars."""
    state, hooks, main = member.state, member.hooks, ctx.is_main
    metrics = MetricsLog(member.run_dir)
    if main:
        metrics.truncate(state.start_epoch)
    scalars = ScalarLog(member.run_dir, state.start_epoch, member.wandb_config) if main and member.scalars else None
    done = 0
    for epoch in range(state.start_epoch, member.epochs):
        t0 = time.perf_counter()
        head, test, val = hooks.run_epoch(epoch)
        seconds = time.perf_counter() - t0
        state.elapsed += seconds
        record = epoch_record(epoch, head, test, val, seconds)
        is_best, is_best_val = state.update(record)
        if main:
            metrics.append(record)
            save_run_checkpoints(member.run_dir, hooks.payload(epoch + 1), is_best, is_best_val)
            if scalars is not None:
                scalars.log(record)
            if member.echo:
                print(console_line(record, member.epochs, member.label), flush=True)
        barrier(ctx)
        done += 1
        if stop_after is not None and done >= stop_after and epoch + 1 < member.epochs:
            break
    if scalars is not None:
        scalars.close()


def write_final(run_dir: Path, ctx: DistContext, summary: dict[str, Any], test: dict[str, Any],
                confusion: torch.Tensor, data: LTData) -> dict[str, Any]:
    """final.json and the figures of the final model (rank 0); every rank waits for them."""
    from ltsam.figures import save_figures

    if ctx.is_main:
        write_json(run_dir / FINAL_NAME, summary)
        save_figures(run_dir, test, data.classes, data.cls_num_list, confusion)
    barrier(ctx)
    return summary


class ProgressAttributes:
    """``.start_epoch``, ``.best_top1``, ``.best_record``, ``.best_val_top1``, ``.best_val_epoch``, ``.elapsed``
    of a run's owner, read from its :class:`Progress` (``self.state``)."""

    state: Progress

    start_epoch = property(lambda self: self.state.start_epoch)
    best_top1 = property(lambda self: self.state.best_top1)
    best_record = property(lambda self: self.state.best_record)
    best_val_top1 = property(lambda self: self.state.best_val_top1)
    best_val_epoch = property(lambda self: self.state.best_val_epoch)
    elapsed = property(lambda self: self.state.elapsed)
