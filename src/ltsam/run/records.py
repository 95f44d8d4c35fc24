"""Epoch records and where they go: metrics.jsonl, TensorBoard, wandb, the console; the best epochs so
far; the summary that final.json holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ltsam.distributed import DistContext, all_reduce_sum
from ltsam.errors import UserError
from ltsam.io import to_json, write_text
from ltsam.metrics import best_record
from ltsam.run.files import METRICS_NAME, TENSORBOARD_DIR

if TYPE_CHECKING:
    from ltsam.data.lt_data import LTData

SHOTS = ("many", "medium", "few")


def epoch_record(epoch: int, head: dict[str, Any], test: dict[str, Any] | None, val: dict[str, Any] | None,
                 seconds: float) -> dict[str, Any]:
    """One line of metrics.jsonl: the epoch, ``head`` (learning rate, rho, training statistics), the test
    results, the validation results (``val_*``, with a validation split) and the epoch's seconds. An epoch that
    ``--eval-every`` does not evaluate (``test`` None) has its test fields as null."""
    if test is None:
        return {"epoch": epoch, **head, "test_loss": None, "test_top1": None, "test_top5": None,
                **{f"{k}_acc": None for k in SHOTS}, "per_class_acc": None, "seconds": seconds}
    return {"epoch": epoch, **head, "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
            **{f"{k}_acc": test["shot_acc"][k] for k in SHOTS}, "per_class_acc": test["per_class_acc"],
            **val_fields(val), "seconds": seconds}


def val_fields(val: dict[str, Any] | None) -> dict[str, Any]:
    """The validation results of one epoch, as ``val_*`` keys of its metrics.jsonl record."""
    if val is None:
        return {}
    return {"val_loss": val["loss"], "val_top1": val["top1"], **{f"val_{k}_acc": val["shot_acc"][k] for k in SHOTS},
            "val_per_class_acc": val["per_class_acc"]}


class EpochTally:
    """One epoch's training statistics (loss sum, correct, seen, steps with a non-finite loss), summed on
    the device so that no step waits for a sync; :meth:`reduce` sums them over the ranks at the end."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Count in one step; whether its loss is non-finite (a tensor on the device)."""
        bad = ~torch.isfinite(loss)
        self.sums[0] += loss.double() * len(y)
        self.sums[1] += (logits.argmax(1) == y).sum()
        self.sums[2] += len(y)
        self.sums[3] += bad
        return bad

    def reduce(self, ctx: DistContext) -> EpochTally:
        self.sums = all_reduce_sum(self.sums, ctx).cpu()
        return self

    @property
    def bad_steps(self) -> int:
        return int(self.sums[3])

    def stats(self) -> dict[str, float]:
        """The record's ``train_loss`` (mean over the images) and ``train_acc`` (percent)."""
        seen = max(float(self.sums[2]), 1.0)
        return {"train_loss": float(self.sums[0]) / seen, "train_acc": 100.0 * float(self.sums[1]) / seen}


@dataclass
class Progress:
    """Where a run stands: the first epoch still to train, the seconds spent, and its best epochs so far
    (test top-1: the paper's protocol; validation top-1: ``best_val.pt``). Saved in every checkpoint."""

    start_epoch: int = 0
    elapsed: float = 0.0
    best_top1: float = -1.0
    best_record: dict[str, Any] | None = None
    best_val_top1: float = -1.0
    best_val_epoch: int | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Progress:
        return cls(int(ckpt["epoch"]), float(ckpt.get("elapsed", 0.0)), float(ckpt["best_top1"]),
                   ckpt.get("best_record"), float(ckpt.get("best_val_top1", -1.0)), ckpt.get("best_val_epoch"))

    def update(self, record: dict[str, Any]) -> tuple[bool, bool]:
        """Count in one epoch's record; whether it is the best on test, and on validation (earliest on a tie).
        An epoch without evaluation (``--eval-every``) is neither."""
        is_best = record["test_top1"] is not None and record["test_top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_record = record["test_top1"], record
        is_best_val = "val_top1" in record and record["val_top1"] > self.best_val_top1
        if is_best_val:
            self.best_val_top1, self.best_val_epoch = record["val_top1"], record["epoch"]
        return is_best, is_best_val

    def checkpoint_fields(self, with_val: bool = True) -> dict[str, Any]:
        """What a checkpoint keeps of the run's progress (``with_val``: the validation selection too)."""
        val = {"best_val_top1": self.best_val_top1, "best_val_epoch": self.best_val_epoch} if with_val else {}
        return {"best_top1": self.best_top1, "best_record": self.best_record, **val, "elapsed": self.elapsed}


class MetricsLog:
    """A run's metrics.jsonl: one JSON line per epoch, appended as the epoch ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_NAME

    def truncate(self, start_epoch: int) -> list[int]:
        """On resume, keep one line for each epoch before the checkpoint; drop the epochs that run again
        (written after the checkpoint) and a line torn by a kill or a full disk. Returns the epochs before the
        checkpoint that have no line (lost from the file: the caller says so)."""
        if not self.path.exists():
            return list(range(start_epoch))
        keep: dict[int, str] = {}
        for record, line in self._whole_lines():
            epoch = record.get("epoch")
            if isinstance(epoch, int) and 0 <= epoch < start_epoch:
                keep[epoch] = line
        write_text(self.path, "".join(keep[e] + "\n" for e in sorted(keep)))
        return [e for e in range(start_epoch) if e not in keep]

    def _whole_lines(self) -> list[tuple[dict[str, Any], str]]:
        """(record, line) for every line that reads as a record: a line torn by a kill or a full disk is none."""
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        whole = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                whole.append((record, line))
        return whole

    def whole_records(self) -> int:
        """How many whole epoch records the file holds (0 without one)."""
        return len(self._whole_lines())

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(to_json(record) + "\n")

    def write(self, records: list[dict[str, Any]]) -> None:
        """Replace the file by ``records`` (a stage without epochs, e.g. tau-normalisation's sweep)."""
        write_text(self.path, "".join(to_json(r) + "\n" for r in records))

    def epochs_done(self) -> int:
        return sum(1 for line in self.path.read_text().splitlines() if line.strip()) if self.path.exists() else 0

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()] if self.path.exists() \
            else []


class ScalarLog:
    """TensorBoard scalars of every epoch (``RUN/tensorboard``), and Weights & Biases with ``--wandb``."""

    KEYS = ("lr", "rho", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "many_acc",
            "medium_acc", "few_acc")

    def __init__(self, run_dir: Path, start_epoch: int, wandb_config: dict[str, Any] | None = None):
        self.writer = _tensorboard(Path(run_dir), start_epoch)
        self.wandb = _wandb(Path(run_dir), wandb_config) if wandb_config is not None else None

    def log(self, record: dict[str, Any]) -> None:
        e = record["epoch"]
        for key in self.KEYS:
            if record.get(key) is not None:
                self.writer.add_scalar(key, record[key], e)
        for c, acc in enumerate(record["per_class_acc"] or ()):
            if acc is not None:
                self.writer.add_scalar(f"class_acc/{c}", acc, e)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "per_class_acc"}
                           | {f"class{c}_acc": a for c, a in enumerate(record["per_class_acc"] or ())}, step=e)

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(run_dir: Path, start_epoch: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return _NullWriter()
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_epoch or None)


class _NullWriter:
    def add_scalar(self, *a, **k): ...
    def close(self): ...


def _wandb(run_dir: Path, config: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs Weights & Biases: pip install wandb (or drop --wandb)") from None
    return wandb.init(project="ltsam", name=run_dir.name, config=config, dir=str(run_dir))


def console_line(record: dict[str, Any], epochs: int, label: str = "") -> str:
    """The line printed after each epoch (``rho`` and the validation top-1 where the record has them)."""
    r = record
    return (f"{label}epoch {r['epoch'] + 1:>3}/{epochs}  lr {r['lr']:.4g}  "
            + (f"rho {r['rho']:.3g}  " if "rho" in r else "")
            + f"train loss {r['train_loss']:.4f} acc {r['train_acc']:.2f}  "
            + (f"test top-1 {r['test_top1']:.2f}  many {_f(r['many_acc'])} med {_f(r['medium_acc'])} "
               f"few {_f(r['few_acc'])}  " if r["test_top1"] is not None else "(not evaluated: --eval-every)  ")
            + (f"val top-1 {r['val_top1']:.2f}  " if "val_top1" in r else "") + f"{r['seconds']:.1f}s")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def best_summary(record: dict[str, Any] | None) -> dict[str, Any]:
    """final.json's ``best``: the epoch of the highest test top-1 (``None``s before the first epoch)."""
    best = record or {}
    return {"epoch": best.get("epoch"), "top1": best.get("test_top1"), "top5": best.get("test_top5"),
            "shot_acc": {k: best.get(f"{k}_acc") for k in SHOTS}, "per_class_acc": best.get("per_class_acc")}


def best_val_summary(metrics: MetricsLog) -> dict[str, Any] | None:
    """The test results at the epoch of the highest validation top-1 (the earliest on a tie), read from
    metrics.jsonl, which holds every epoch of the run (a resumed run's too)."""
    if not metrics.path.exists():
        return None
    r = best_record(metrics.records(), "val_top1")
    if r is None:
        return None
    return {"epoch": r["epoch"], "val_top1": r["val_top1"], "top1": r["test_top1"], "top5": r["test_top5"],
            "shot_acc": {k: r[f"{k}_acc"] for k in SHOTS}, "per_class_acc": r["per_class_acc"],
            "selected_on": "validation"}


def data_summary(data: LTData) -> dict[str, Any]:
    """final.json's description of the data: classes, their training counts, the split sizes."""
    return {"classes": data.classes, "cls_num_list": data.cls_num_list, "train_images": data.train_size,
            "test_images": data.test_size}


def machine_summary(elapsed: float, device: torch.device, ctx: DistContext) -> dict[str, Any]:
    """final.json's training seconds, device and number of processes."""
    return {"train_seconds": elapsed, "device": str(device), "world_size": ctx.world}


def training_summary(run_dir: Path, epochs: int, state: Progress, test: dict[str, Any], *, data: LTData,
                     device: torch.device, ctx: DistContext) -> dict[str, Any]:
    """final.json of a training run (a plain run or a pack's member): the final and best epochs, the best
    on validation, the data and the machine."""
    metrics = MetricsLog(run_dir)
    val_size = int(getattr(data, "val_size", 0))  # a plugin's data set may have no split
    return {
        "epochs_done": metrics.epochs_done(),
        "epochs": epochs,
        "final": test,
        "best": best_summary(state.best_record) | {
            "selected_on": "test",
            "note": "the epoch of the highest test top-1: the paper's protocol, for comparison only"},
        "best_val": best_val_summary(metrics) if val_size and ctx.is_main else None,
        **data_summary(data),
        "val_images": val_size,
        "val_cls_num_list": getattr(data, "val_cls_num_list", []),
        **machine_summary(state.elapsed, device, ctx),
    }
