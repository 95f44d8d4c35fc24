"""Runs a second stage on a finished run into its own run folder.

The folder holds ``config.json`` (the stage, its options and the parent: checkpoint path and SHA-256),
``metrics.jsonl``, ``last.pt``/``best.pt`` (ltsam checkpoints of the parent's architecture with the
stage's classifier folded in, plus the head's own state for ``--resume``), ``final.json`` (with the
parent's training configuration, ``parent_config``) and the figures. The parent's data set, batch
sources, evaluation and checkpoint format are the trainer's; one process or several under ``torchrun``
(rank 0 writes the folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltsam.errors import TrainingDiverged, UserError
from ltsam.evaluate import evaluate, shot_split_groups
from ltsam.finetune.heads import classifier_path, get_module, swapped
from ltsam.finetune.parent import Parent, StageSettings
from ltsam.finetune.stages import Stage, balanced_weights, build_stage
from ltsam.objectives import supervised_objective
from ltsam.optim import StepSettings, build_step
from ltsam.run.checkpoints import load_last, load_states, restore_scaler, scaler_state
from ltsam.run.files import LAST
from ltsam.run.loop import EpochResult, Member, ProgressAttributes, run_epochs, write_final
from ltsam.run.records import EpochTally, MetricsLog, Progress, best_summary, data_summary, machine_summary
from ltsam.run.runtime import data_parallel, precision, start_runtime
from ltsam.runs import model_from_meta
from ltsam.schedules import cosine_lr


class StageRunner(ProgressAttributes):
    """One stage on one parent into ``run_dir``; ``resume=True`` continues from ``run_dir/last.pt``."""

    def __init__(self, settings: StageSettings, parent: Parent, run_dir: Path, data=None, resume: bool = False,
                 progress: bool = True):
        from ltsam.data.loading import load_data

        self.settings, self.parent, self.run_dir = settings, parent, Path(run_dir)
        cfg = self.cfg = parent.cfg
        if settings.data_root:
            cfg.data_root = settings.data_root
        if settings.workers is not None:
            cfg.workers = settings.workers
        self.ctx, self.device = start_runtime(settings.device, cfg, settings.seed)
        self.progress = progress and self.ctx.is_main
        self.data = data if data is not None else load_data(cfg)
        saved = parent.ckpt.get("cls_num_list")
        if saved is not None and list(saved) != list(self.data.cls_num_list):
            raise UserError(f"the data set found now has other class counts ({self.data.cls_num_list[:5]}...) "
                            f"than the parent trained on ({list(saved)[:5]}...); point --data-root at its data")
        self.stage: Stage = build_stage(settings.stage, settings.options)
        meta = parent.ckpt["model_meta"]
        self.model = model_from_meta(meta)
        self.model.load_state_dict(parent.ckpt["model"])
        self.model.to(self.device).requires_grad_(False).eval()  # the backbone stays frozen, batch-norm included
        self.path = classifier_path(self.model)
        self.stage.check(get_module(self.model, self.path))
        torch.manual_seed(settings.seed)  # cRT's new classifier: the same on every rank and every resume
        params = self.stage.install(self.model, self.path)
        self.meta = self.stage.output_meta(meta)
        self.autocast, self.scaler = precision(cfg.amp, self.device, scaled=self.stage.trains)
        self.groups = shot_split_groups(cfg, self.data.num_classes)
        self.state = Progress()
        self.step = None
        if self.stage.trains:
            weights = balanced_weights(self.data.cls_num_list) if self.stage.balanced else None
            self.source = self.data.train_source(self.stage.batch_size, settings.seed, self.device, weights,
                                                 channels_last=False, workers=cfg.workers,
                                                 rank=self.ctx.rank, world=self.ctx.world)
            self.step = build_step("sgd", params, StepSettings(lr=self.stage.lr, momentum=self.stage.momentum,
                                                               wd=self.stage.wd, autocast=self.autocast,
                                                               scaler=self.scaler))
            self.criterion = self.stage.criterion(self.data.cls_num_list).to(self.device)
            self.net: nn.Module = data_parallel(self.model, self.ctx, self.device)
        if resume and self.stage.trains:  # tau-norm has nothing to resume: it runs again
            self._restore(load_last(self.run_dir))

    # ------------------------------------------------------------------ pieces
    @property
    def head(self) -> nn.Module:
        return get_module(self.model, self.path)

    def test_batches(self):
        return self.data.test_batches(self.cfg.eval_batch_size, self.device, False, self.cfg.workers,
                                      self.ctx.rank, self.ctx.world)

    def evaluate(self, criterion: nn.Module | None = None) -> tuple[dict[str, Any], torch.Tensor]:
        """The stage's model as it will be saved (the head folded into a plain classifier)."""
        with swapped(self.model, self.path, self.stage.folded(self.head)):
            return evaluate(self.model, self.test_batches(), self.data.cls_num_list, criterion, self.ctx,
                            groups=self.groups, autocast=self.autocast)

    def payload(self, epoch: int) -> dict[str, Any]:
        """An ltsam checkpoint (``weights_only`` loadable): the folded model for ``ltsam eval``, and the head's
        own state (e.g. LWS's scales) with the optimizer's for ``--resume``."""
        with swapped(self.model, self.path, self.stage.folded(self.head)):
            model_state = self.model.state_dict()
        return {"epoch": epoch, "model": model_state,
                "optimizer": self.step.optimizer.state_dict() if self.step is not None else {},
                "model_meta": self.meta, "config": self.cfg.to_dict(), "cls_num_list": self.data.cls_num_list,
                "classes": self.data.classes, **self.state.checkpoint_fields(with_val=False),
                "scaler": scaler_state(self.scaler),
                "stage": {"name": self.stage.name, "options": self.settings.options, "parent": self.parent.info},
                "stage_head": self.head.state_dict()}

    def _restore(self, ckpt: dict[str, Any]) -> None:
        saved = ckpt.get("stage") or {}
        if saved.get("name") != self.stage.name or (saved.get("parent") or {}).get("sha256") != \
                self.parent.info["sha256"]:
            raise UserError(f"cannot resume: {self.run_dir / LAST} is not this stage on this parent; start "
                            f"the stage again with --overwrite")
        load_states(ckpt, [(self.head, "stage_head")] + ([(self.step.optimizer, "optimizer")] if self.step else []),
                    "cannot resume: the state in last.pt does not fit this stage ({reason})")
        restore_scaler(self.scaler, ckpt)
        self.state = Progress.from_checkpoint(ckpt)

    # ------------------------------------------------------------------ training stages
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.eval()  # frozen batch-norm statistics; the head has no train-mode behaviour
        self.source.set_epoch(epoch)
        tally = EpochTally(self.device)
        assert self.step is not None  # a stage with epochs trains
        for x, y in self.source:
            out = self.step(self.net, supervised_objective(x, y, self.criterion, self.autocast)).last
            self.stage.after_step(self.head)
            tally.add(out.report.detach(), out.logits.detach(), y)
        bad_steps = tally.reduce(self.ctx).bad_steps
        head_ok = all(bool(torch.isfinite(t).all()) for t in self.head.state_dict().values() if t.is_floating_point())
        if not head_ok or (bad_steps > 0 and self.scaler is None):
            raise TrainingDiverged(f"the stage diverged in epoch {epoch + 1} (non-finite loss or classifier); "
                                   f"start it again with a smaller --lr (now {self.stage.lr:g})")
        return tally.stats()

    def run_epoch(self, epoch: int, members: Sequence[Member] = ()) -> list[EpochResult | None]:
        """The loop's hook: one epoch of the stage on the cosine schedule, then the test results."""
        lr = cosine_lr(epoch, self.stage.lr, self.stage.epochs)
        assert self.step is not None  # a stage with epochs trains
        for group in self.step.optimizer.param_groups:
            group["lr"] = lr
        stats = self.train_epoch(epoch)
        return [({"lr": lr, **stats}, self.evaluate(self.criterion)[0], None)]

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        if not self.stage.trains:  # e.g. tau-norm: the stage's own hook instead of epochs
            return self.stage.fit_without_epochs(self)
        member = Member(self.run_dir, self.stage.epochs, self.state, self.payload, label=f"{self.stage.name} ",
                        echo=self.progress)
        run_epochs([member], self, self.ctx, stop_after)
        return self.finish()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate the stage's model, write final.json and the figures (rank 0); return the summary."""
        test, conf = self.evaluate(None)
        summary = {
            "stage": self.stage.name, "stage_options": self.settings.options, "parent": self.parent.info,
            "parent_config": self.parent.ckpt["config"],  # what `ltsam report` groups the stage's seeds by
            "epochs_done": MetricsLog(self.run_dir).epochs_done() if self.stage.trains else 0,
            "epochs": self.stage.epochs if self.stage.trains else 0,
            "final": test,
            "best": best_summary(self.best_record),
            **data_summary(self.data),
            **machine_summary(self.elapsed, self.device, self.ctx),
            **(extra or {}),
        }
        return write_final(self.run_dir, self.ctx, summary, test, conf, self.data)
