"""The training loop: data, model, loss rule, optimizer, schedules, evaluation, run folder.

One trainer serves every data set and launch mode: in-memory or streaming batch sources, one
process or several under ``torchrun`` (DistributedDataParallel; rank 0 writes the run folder).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltsam.acceleration import (
    allow_retained_graphs,
    autocast_context,
    compile_with_fallback,
    grad_scaler,
    should_compile,
)
from ltsam.config import TrainConfig, resolve_derived
from ltsam.data.catalog import DATASETS, native_epochs
from ltsam.data.loading import load_data
from ltsam.distributed import all_reduce_sum, barrier, init_distributed, resolve_device
from ltsam.errors import TrainingDiverged, UserError
from ltsam.evaluate import evaluate
from ltsam.faults import fault_point
from ltsam.io import load_checkpoint, save_checkpoint, to_json, write_json
from ltsam.losses import build_loss
from ltsam.methods import METHODS, MethodContext
from ltsam.metrics import best_record, index_groups
from ltsam.rules import build_rule
from ltsam.runs import model_from_meta
from ltsam.schedules import learning_rate, rho_for_epoch, scale_epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rho_step_epochs(cfg: TrainConfig) -> tuple[int, int, int]:
    """1-indexed boundaries of the step rho schedule: (5, 160, 180) of 200 or (5, 60, 75) of 90."""
    native = native_epochs(cfg.dataset)
    marks = (5, 160, 180) if native == 200 else (5, 60, 75)
    return tuple(scale_epoch(m, cfg.epochs, native) for m in marks)  # type: ignore[return-value]


class Trainer:
    """Trains one configuration into one run folder; ``resume=True`` continues from ``last.pt``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                 data=None):
        self.cfg, self.run_dir = resolve_derived(cfg), Path(run_dir)
        self.ctx, self.device = init_distributed(resolve_device(cfg.device))
        self.progress = progress and self.ctx.is_main
        threads = cfg.threads if cfg.threads is not None else (1 if cfg.arch == "small_cnn" else None)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        seed_everything(cfg.seed)
        self.data = data if data is not None else load_data(cfg)
        self.val_size = int(getattr(self.data, "val_size", 0))  # a plugin's data set may have no split
        method = METHODS.get(cfg.method)
        self.meta = method.model_meta(cfg, self.data)
        self.model = model_from_meta(self.meta).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        amp = cfg.amp if (self.device.type == "cuda" or cfg.amp == "bf16") else None
        self.autocast = autocast_context(amp, self.device)
        self.scaler = grad_scaler(amp, self.device)
        self.method = method(MethodContext(cfg, self.data, self.model, self.device, self.autocast, self.scaler,
                                           self.ctx.rank, self.ctx.world))
        self.source, self.optimizer = self.method.source, self.method.optimizer
        self.net = self._wrap_model()
        self.groups = (index_groups(self.data.num_classes, DATASETS.entry(cfg.dataset).meta["index_split"])
                       if cfg.shot_split == "index" else None)
        self.start_epoch, self.best_top1, self.best_record = 0, -1.0, None
        self.best_val_top1, self.best_val_epoch = -1.0, None  # best_val.pt: selected on the validation split
        self.elapsed = 0.0
        if resume:
            self._restore(load_checkpoint(self.run_dir / "last.pt"))

    def _wrap_model(self) -> torch.nn.Module:
        """The module the steps call: compiled where asked for (or auto) and working, DDP-wrapped
        under torchrun."""
        net: torch.nn.Module = self.model
        total_steps = len(self.source) * self.cfg.epochs
        self.cfg.compile = should_compile(self.cfg.compile, self.device, total_steps)  # recorded in config.json
        if self.cfg.compile:  # GLMC too: 1.25x (SAM) / 1.43x (SGD) on a CPU
            if self.method.step.retains_graph:  # several backward passes through one forward pass
                allow_retained_graphs()
            t0 = time.perf_counter()
            net, ok = compile_with_fallback(self.model, self.method.compile_trial)
            if ok and self.ctx.is_main:
                print(f"ltsam: model compiled with torch.compile in {time.perf_counter() - t0:.0f}s "
                      f"(--no-compile to skip)", flush=True)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DDP(net, device_ids=ids, find_unused_parameters=self.method.ddp_find_unused_parameters)
        return net

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("model_meta") != self.meta:
            raise UserError(f"cannot resume: checkpoint is a {ckpt.get('model_meta')} model, this run "
                            f"builds {self.meta}; resume with the run's own configuration")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"cannot resume: the weights or optimizer state in last.pt do not fit this run "
                            f"({str(exc).strip().splitlines()[0][:160]}); the file is damaged or from another run"
                            ) from None
        if ckpt.get("step"):
            self.method.step.load_state_dict(ckpt["step"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.best_top1 = float(ckpt["best_top1"])
        self.best_record = ckpt.get("best_record")
        self.best_val_top1 = float(ckpt.get("best_val_top1", -1.0))
        self.best_val_epoch = ckpt.get("best_val_epoch")
        self.elapsed = float(ckpt.get("elapsed", 0.0))

    # ------------------------------------------------------------------ one epoch
    def set_hyperparameters(self, epoch: int) -> tuple[float, float]:
        cfg = self.cfg
        lr = learning_rate(cfg.lr_schedule, epoch, cfg.lr, cfg.epochs)
        rho = rho_for_epoch(cfg.rho_schedule, epoch, cfg.epochs, cfg.rho, cfg.min_rho, cfg.max_rho,
                            tuple(cfg.rho_steps) if cfg.rho_steps else None, rho_step_epochs(cfg))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "rho" in group:
                group["rho"] = rho
        self.method.step.set_progress(epoch, cfg.epochs, len(self.source))  # e.g. SSE-SAM's switch, AE-SAM's c_t
        return lr, (rho if self.cfg.uses_sam else 0.0)

    def criterion_for(self, epoch: int) -> torch.nn.Module:
        weights = build_rule(self.cfg.train_rule, self.cfg).class_weights(self.data.cls_num_list, epoch)
        return build_loss(self.cfg.loss, self.data.cls_num_list, weights, config=self.cfg).to(self.device)

    def train_epoch(self, epoch: int, criterion: torch.nn.Module) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.net.train()
        self.source.set_epoch(epoch)
        # loss sum, correct, seen, steps with a non-finite loss; kept on the device (no sync per step)
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)
        step = torch.zeros((), device=self.device, dtype=torch.long)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        bar = tqdm(self.source, total=len(self.source), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   leave=False, disable=not self.progress, unit="batch")
        self.method.prepare(epoch, criterion)
        for batch in bar:
            loss, logits, y = self.method(self.net, batch)
            fault_point("step")
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            sums[0] += loss.double() * len(y)
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
            sums[3] += bad
            step += 1
        sums = all_reduce_sum(sums, self.ctx).cpu()
        self._check_finite(epoch, int(sums[3]), int(first_bad), int(step))
        seen = max(float(sums[2]), 1.0)
        return {"train_loss": float(sums[0]) / seen, "train_acc": 100.0 * float(sums[1]) / seen}

    def _check_finite(self, epoch: int, bad_steps: int, first_bad: int, steps: int) -> None:
        """Stop on a diverged run before its checkpoint is written, so ``last.pt`` stays finite.

        Weights or batch-norm statistics that are no longer finite stop the run. So does a non-finite
        loss, except under fp16 loss scaling, where the scaler skips an overflowing step: there only an
        epoch that is non-finite throughout counts as divergence.
        """
        state = [t for t in self.model.state_dict().values() if t.is_floating_point()]  # batch-norm statistics too
        weights_ok = bool(torch.stack([torch.isfinite(t).all() for t in state]).all())
        if weights_ok and (bad_steps == 0 or (self.scaler is not None and bad_steps < steps * self.ctx.world)):
            return
        what = (f"the loss became non-finite at epoch {epoch + 1}, step {first_bad + 1} of {steps} "
                f"({bad_steps} non-finite steps)" if first_bad >= 0 else
                f"the weights or batch-norm statistics became non-finite in epoch {epoch + 1}")
        kept = (f"the last finite checkpoint, {self.run_dir / 'last.pt'} (epoch {epoch}), is kept" if epoch > 0
                else "no checkpoint was written")
        raise TrainingDiverged(f"training diverged: {what}; {kept}. Start again with a smaller --lr "
                               f"(now {self.cfg.lr:g}) or check the data")

    def evaluate(self, criterion: torch.nn.Module | None, split: str = "test") -> tuple[dict[str, Any], torch.Tensor]:
        """Results on the ``test`` images, or on the held-out ``val`` images."""
        make = self.data.val_batches if split == "val" else self.data.test_batches
        batches = make(self.cfg.eval_batch_size, self.device, self.cfg.channels_last, self.cfg.workers,
                       self.ctx.rank, self.ctx.world)
        return evaluate(self.net, batches, self.data.cls_num_list, criterion, self.ctx, self.groups,
                        self.autocast)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        cfg, run_dir, main = self.cfg, self.run_dir, self.ctx.is_main
        metrics_path = run_dir / "metrics.jsonl"
        if main:
            _truncate_metrics(metrics_path, self.start_epoch)
        writer = _tensorboard(run_dir, self.start_epoch) if main else _NullWriter()
        wandb_run = _wandb(cfg, run_dir) if cfg.wandb and main else None
        done = 0
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr, rho = self.set_hyperparameters(epoch)
            criterion = self.criterion_for(epoch)
            train_stats = self.train_epoch(epoch, criterion)
            test, _ = self.evaluate(criterion)
            val = self.evaluate(criterion, "val")[0] if self.val_size else None
            seconds = time.perf_counter() - t0
            self.elapsed += seconds
            record = {"epoch": epoch, "lr": lr, "rho": rho, **train_stats,
                      "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
                      "many_acc": test["shot_acc"]["many"], "medium_acc": test["shot_acc"]["medium"],
                      "few_acc": test["shot_acc"]["few"], "per_class_acc": test["per_class_acc"],
                      **_val_fields(val), "seconds": seconds}
            is_best = test["top1"] > self.best_top1
            if is_best:
                self.best_top1, self.best_record = test["top1"], record
            is_best_val = val is not None and val["top1"] > self.best_val_top1  # the earliest on a tie
            if is_best_val:
                self.best_val_top1, self.best_val_epoch = val["top1"], epoch
            if main:
                with open(metrics_path, "a") as f:
                    f.write(to_json(record) + "\n")
                self._save(epoch, is_best, is_best_val)
                _log_scalars(writer, wandb_run, record)
                print(f"epoch {epoch + 1:>3}/{cfg.epochs}  lr {lr:.4g}  rho {rho:.3g}  "
                      f"train loss {train_stats['train_loss']:.4f} acc {train_stats['train_acc']:.2f}  "
                      f"test top-1 {test['top1']:.2f}  many {_f(test['shot_acc']['many'])} "
                      f"med {_f(test['shot_acc']['medium'])} few {_f(test['shot_acc']['few'])}  "
                      + (f"val top-1 {val['top1']:.2f}  " if val else "") + f"{seconds:.1f}s", flush=True)
            barrier(self.ctx)
            done += 1
            if stop_after is not None and done >= stop_after and epoch + 1 < cfg.epochs:
                break
        writer.close()
        if wandb_run is not None:
            wandb_run.finish()
        return self.finish()

    def _save(self, epoch: int, is_best: bool, is_best_val: bool = False) -> None:
        payload = {"epoch": epoch + 1, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "model_meta": self.meta,
                   "config": self.cfg.to_dict(), "cls_num_list": self.data.cls_num_list,
                   "classes": self.data.classes, "best_top1": self.best_top1,
                   "best_record": self.best_record, "best_val_top1": self.best_val_top1,
                   "best_val_epoch": self.best_val_epoch, "elapsed": self.elapsed,
                   "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                   "step": self.method.step.state_dict()}
        save_checkpoint(self.run_dir / "last.pt", payload)
        if is_best:
            save_checkpoint(self.run_dir / "best.pt", payload)
        if is_best_val:
            save_checkpoint(self.run_dir / "best_val.pt", payload)

    def finish(self) -> dict[str, Any]:
        """Evaluate the current model, write final.json and the figures (rank 0); return the summary."""
        from ltsam.figures import save_figures

        test, conf = self.evaluate(None)
        best = self.best_record or {}
        summary = {
            "epochs_done": _epochs_done(self.run_dir),
            "epochs": self.cfg.epochs,
            "final": test,
            "best": {"epoch": best.get("epoch"), "top1": best.get("test_top1"),
                     "top5": best.get("test_top5"),
                     "shot_acc": {k: best.get(f"{k}_acc") for k in ("many", "medium", "few")},
                     "per_class_acc": best.get("per_class_acc"), "selected_on": "test",
                     "note": "the epoch of the highest test top-1: the paper's protocol, for comparison only"},
            "best_val": _best_val(self.run_dir / "metrics.jsonl") if self.val_size and self.ctx.is_main else None,
            "classes": self.data.classes,
            "cls_num_list": self.data.cls_num_list,
            "train_images": self.data.train_size,
            "test_images": self.data.test_size,
            "val_images": self.val_size,
            "val_cls_num_list": getattr(self.data, "val_cls_num_list", []),
            "train_seconds": self.elapsed,
            "device": str(self.device),
            "world_size": self.ctx.world,
        }
        if self.ctx.is_main:
            write_json(self.run_dir / "final.json", summary)
            save_figures(self.run_dir, test, self.data.classes, self.data.cls_num_list, conf)
        barrier(self.ctx)
        return summary


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _val_fields(val: dict[str, Any] | None) -> dict[str, Any]:
    """The validation results of one epoch, as ``val_*`` keys of its metrics.jsonl record."""
    if val is None:
        return {}
    return {"val_loss": val["loss"], "val_top1": val["top1"], "val_many_acc": val["shot_acc"]["many"],
            "val_medium_acc": val["shot_acc"]["medium"], "val_few_acc": val["shot_acc"]["few"],
            "val_per_class_acc": val["per_class_acc"]}


def _best_val(metrics_path: Path) -> dict[str, Any] | None:
    """The test results at the epoch of the highest validation top-1 (the earliest on a tie), read from
    metrics.jsonl, which holds every epoch of the run (a resumed run's too)."""
    if not metrics_path.exists():
        return None
    r = best_record((json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()), "val_top1")
    if r is None:
        return None
    return {"epoch": r["epoch"], "val_top1": r["val_top1"], "top1": r["test_top1"], "top5": r["test_top5"],
            "shot_acc": {k: r[f"{k}_acc"] for k in ("many", "medium", "few")}, "per_class_acc": r["per_class_acc"],
            "selected_on": "validation"}


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _truncate_metrics(path: Path, start_epoch: int) -> None:
    """On resume, keep one line for each epoch before the checkpoint; drop the epochs that run again
    (written after the checkpoint) and a line torn by a kill or a full disk."""
    if not path.exists():
        return
    keep: dict[int, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            epoch = json.loads(line)["epoch"]
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
        if isinstance(epoch, int) and 0 <= epoch < start_epoch:
            keep[epoch] = line
    from ltsam.io import write_text

    write_text(path, "".join(keep[e] + "\n" for e in sorted(keep)))


def _tensorboard(run_dir: Path, start_epoch: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return _NullWriter()
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch or None)


class _NullWriter:
    def add_scalar(self, *a, **k): ...
    def close(self): ...


def _wandb(cfg: TrainConfig, run_dir: Path):
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs Weights & Biases: pip install wandb (or drop --wandb)") from None
    return wandb.init(project="ltsam", name=run_dir.name, config=cfg.to_dict(), dir=str(run_dir))


def _log_scalars(writer, wandb_run, record: dict[str, Any]) -> None:
    e = record["epoch"]
    for key in ("lr", "rho", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5",
                "many_acc", "medium_acc", "few_acc"):
        if record.get(key) is not None:
            writer.add_scalar(key, record[key], e)
    for c, acc in enumerate(record["per_class_acc"]):
        if acc is not None:
            writer.add_scalar(f"class_acc/{c}", acc, e)
    if wandb_run is not None:
        wandb_run.log({k: v for k, v in record.items() if k != "per_class_acc"}
                      | {f"class{c}_acc": a for c, a in enumerate(record["per_class_acc"])}, step=e)
