"""The epoch loop of a run: train and evaluate through the owner's hooks, record the epoch, keep the best,
save the checkpoints, stop after ``stop_after`` epochs; and the final.json that ends a run.

The loop drives a list of :class:`Member` runs (each a run folder with its records and checkpoints; a plain run
is a list of one, a pack of runs trained as one model a longer list); the trainer, the stage runner and the pack
supply the hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ltsam.distributed import DistContext, barrier
from ltsam.io import write_json
from ltsam.run.checkpoints import save_run_checkpoints
from ltsam.run.files import FINAL_NAME, METRICS_NAME
from ltsam.run.records import MetricsLog, Progress, ScalarLog, console_line, epoch_record

if TYPE_CHECKING:
    from ltsam.data.lt_data import LTData


EpochResult = tuple[dict[str, Any], "dict[str, Any] | None", "dict[str, Any] | None"]
"""One member's epoch: (the record's head: lr, rho, training statistics), the test results (``None`` for an epoch
``--eval-every`` does not evaluate) and the validation results (``None`` without a validation split, or then)."""


class EpochHooks(Protocol):
    def run_epoch(self, epoch: int, members: Sequence[Member]) -> Sequence[EpochResult | None]:
        """Train ``members`` (those whose turn ``epoch`` is) one epoch and evaluate them: one result per member,
        ``None`` for a member that stopped in this epoch (it diverged; the hook recorded why)."""


@dataclass
class Member:
    """One run the loop drives: its folder, how many epochs, where it stands, and its checkpoint."""

    run_dir: Path
    epochs: int
    state: Progress
    payload: Callable[[int], dict[str, Any]]  # the checkpoint after that many epochs
    _: KW_ONLY
    label: str = ""  # before "epoch" on the console, e.g. the stage's name
    echo: bool = True  # print a line after each epoch (rank 0)
    scalars: bool = False  # TensorBoard scalars
    wandb_config: dict[str, Any] | None = None  # Weights & Biases, with this configuration
    stopped: bool = False  # it diverged: no more epochs, its last finite checkpoint stays


def run_epochs(members: Sequence[Member], hooks: EpochHooks, ctx: DistContext, stop_after: int | None = None) -> None:
    """Train every member from its ``start_epoch`` to its last epoch, or for ``stop_after`` epochs; rank 0
    writes each member's metrics.jsonl, checkpoints and scalars into its own folder.

    A plain run is one member. The members of a pack take part in each epoch they have not yet done, so one
    that is behind (a pack killed between two members' checkpoints) catches up before the others go on.
    """
    main = ctx.is_main
    logs = {id(m): MetricsLog(m.run_dir) for m in members}
    scalars: dict[int, ScalarLog] = {}
    for m in members:
        if main:
            _say_missing(m.run_dir, logs[id(m)].truncate(m.state.start_epoch), m.state.start_epoch)
            if m.scalars:
                scalars[id(m)] = ScalarLog(m.run_dir, m.state.start_epoch, m.wandb_config)
    done = 0
    while True:
        pending = [m for m in members if not m.stopped and m.state.start_epoch < m.epochs]
        if not pending:
            break
        epoch = min(m.state.start_epoch for m in pending)
        turn = [m for m in pending if m.state.start_epoch == epoch]
        t0 = time.perf_counter()
        results = hooks.run_epoch(epoch, turn)
        seconds = time.perf_counter() - t0
        for m, result in zip(turn, results, strict=True):
            if result is None:
                m.stopped = True
                continue
            _record(m, epoch, result, seconds, main=main, metrics=logs[id(m)], scalars=scalars.get(id(m)))
        barrier(ctx)
        done += 1
        if stop_after is not None and done >= stop_after:
            break
    for log in scalars.values():
        log.close()


def _say_missing(run_dir: Path, missing: list[int], done: int) -> None:
    """A resumed run whose metrics.jsonl lacks some of its finished epochs continues, saying which: its curves
    and ``ltsam report``'s epoch counts have a gap there (the weights are last.pt's, whole)."""
    if missing:
        shown = ", ".join(str(e + 1) for e in missing[:8]) + (" ..." if len(missing) > 8 else "")
        print(f"ltsam: warning: {run_dir / METRICS_NAME} has no record of epoch{'s' if len(missing) > 1 else ''} "
              f"{shown} of the {done} its last.pt has finished (lost from the file); training continues from "
              f"last.pt, and its curves keep that gap", flush=True)


def _record(m: Member, epoch: int, result: EpochResult, seconds: float, *, main: bool, metrics: MetricsLog,
            scalars: ScalarLog | None) -> None:
    """One member's epoch: the record, the best-so-far, metrics.jsonl, the checkpoints, the console line."""
    head, test, val = result
    m.state.elapsed += seconds
    record = epoch_record(epoch, head, test, val, seconds)
    is_best, is_best_val = m.state.update(record)
    m.state.start_epoch = epoch + 1
    if main:
        metrics.append(record)
        save_run_checkpoints(m.run_dir, m.payload(epoch + 1), is_best, is_best_val)
        if scalars is not None:
            scalars.log(record)
        if m.echo:
            print(console_line(record, m.epochs, m.label), flush=True)


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
