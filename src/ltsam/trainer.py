"""The training loop: data, model, loss rule, optimizer, schedules, evaluation, run folder.

One trainer serves every data set and launch mode: in-memory or streaming batch sources, one
process or several under ``torchrun`` (DistributedDataParallel; rank 0 writes the run folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ltsam.config import TrainConfig, resolve_derived
from ltsam.data.catalog import DATASETS
from ltsam.data.loading import load_data
from ltsam.epoch_settings import epoch_criterion, epoch_lr, epoch_rho, evaluated
from ltsam.errors import UserError
from ltsam.evaluate import evaluate
from ltsam.faults import fault_point
from ltsam.methods import METHODS, MethodContext
from ltsam.metrics import index_groups
from ltsam.models import MODELS
from ltsam.run.checkpoints import load_last, load_states, restore_scaler, scaler_state, training_checkpoint
from ltsam.run.health import check_finite
from ltsam.run.loop import EpochResult, Member, ProgressAttributes, run_epochs, write_final
from ltsam.run.records import EpochTally, Progress, training_summary
from ltsam.run.runtime import compiled, data_parallel, precision, seed_everything, settle, start_runtime
from ltsam.runs import model_from_meta


class Trainer(ProgressAttributes):
    """Trains one configuration into one run folder; ``resume=True`` continues from ``last.pt``.

    Built in two steps: the constructor builds everything a flag can make fail (device, data, model with its
    weights, method, optimizer) and touches no file; :meth:`start` then restores ``last.pt`` (resuming), caches
    features and compiles. ``build_only=True`` stops after the first, so that a new run's folder is made only
    once its model exists (a refused command leaves nothing behind); ``start()`` follows."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                 data=None, build_only: bool = False):
        cfg = cfg if cfg.frozen else resolve_derived(cfg)
        self.run_dir = Path(run_dir)
        self.ctx, self.device = start_runtime(cfg.device, cfg, cfg.seed)
        self.progress = progress and self.ctx.is_main
        self.data = data if data is not None else load_data(cfg)
        self.cfg = cfg = settle(cfg, self.data.train_size)  # compile decided, then frozen: what config.json says
        seed_everything(cfg.seed)  # the model's initialisation never depends on what loading the data drew
        self.val_size = int(getattr(self.data, "val_size", 0))  # a plugin's data set may have no split
        method = METHODS.get(cfg.method)
        self.meta = method.model_meta(cfg, self.data)
        model = model_from_meta(self.meta, weights=not resume)  # resuming: last.pt's
        init_model = MODELS.entry(cfg.arch).meta.get("init_model") if cfg.arch and cfg.arch in MODELS else None
        if init_model is not None and not resume:  # a new run's model finished from the data (clip's text head)
            init_model(model, cfg, list(self.data.classes))
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.autocast, self.scaler = precision(cfg.amp, self.device)
        self.method = method(MethodContext(cfg, self.data, self.model, self.device, self.autocast,
                                           scaler=self.scaler, rank=self.ctx.rank, world=self.ctx.world))
        self.source, self.optimizer = self.method.source, self.method.optimizer
        self.state = Progress()  # best_val.pt: selected on the validation split
        self.groups = (index_groups(self.data.num_classes, DATASETS.entry(cfg.dataset).meta["index_split"])
                       if cfg.shot_split == "index" else None)
        self.resume, self.net = resume, self.model
        if not build_only:
            self.start()

    def start(self) -> Trainer:
        """The steps that need the run folder or are long: ``last.pt`` restored (resuming), the frozen backbone's
        features cached (``--feature-cache``), the model compiled and DDP-wrapped (collective under torchrun, so
        that the other ranks wait here for rank 0's folder)."""
        if self.resume:
            self._restore(load_last(self.run_dir))
        if getattr(self.cfg, "feature_cache", False):  # a linear probe on the frozen backbone's features, once:
            self.source = self.method.source = self._feature_source()  # after restoring (a resumed run's backbone)
        self.net = self._wrap_model()
        return self

    def _feature_source(self) -> Any:
        """The training batches as the frozen backbone's features of the un-augmented images (``--feature-cache``)."""
        from ltsam.data.sources import InMemoryBatchSource, cached_features

        if not isinstance(self.source, InMemoryBatchSource):
            raise UserError("--feature-cache needs an in-memory data set (its training images on the device)")
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return cached_features(self.source, model.features, self.cfg.eval_batch_size)  # type: ignore[arg-type]
        finally:
            model.train(was_training)

    def _wrap_model(self) -> torch.nn.Module:
        """The module the steps call: compiled where asked for (or auto) and working, DDP-wrapped
        under torchrun."""
        net: torch.nn.Module = self.model
        if self.cfg.compile:  # GLMC too, by the same rule (measured: docs/speed.md)
            net = compiled(self.model, self.method.compile_trial, self.method.built_step().retains_graph,
                           self.ctx.is_main)
        return data_parallel(net, self.ctx, self.device, self.method.ddp_find_unused_parameters)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("model_meta") != self.meta:
            raise UserError(f"cannot resume: checkpoint is a {ckpt.get('model_meta')} model, this run "
                            f"builds {self.meta}; resume with the run's own configuration")
        load_states(ckpt, [(self.model, "model"), (self.optimizer, "optimizer")],
                    "cannot resume: the weights or optimizer state in last.pt do not fit this run ({reason}); "
                    "the file is damaged or from another run")
        if ckpt.get("step"):
            self.method.built_step().load_state_dict(ckpt["step"])
        restore_scaler(self.scaler, ckpt)
        self.state = Progress.from_checkpoint(ckpt)

    # ------------------------------------------------------------------ one epoch
    def set_hyperparameters(self, epoch: int) -> tuple[float, float]:
        cfg = self.cfg
        lr, rho = epoch_lr(cfg, epoch), epoch_rho(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "rho" in group:
                group["rho"] = rho
        # e.g. SSE-SAM's switch, AE-SAM's c_t
        self.method.built_step().set_progress(epoch, cfg.epochs, len(self.source))
        return lr, (rho if self.cfg.uses_sam else 0.0)

    def criterion_for(self, epoch: int) -> torch.nn.Module:
        return epoch_criterion(self.cfg, self.data, epoch, self.device)

    def train_epoch(self, epoch: int, criterion: torch.nn.Module) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.net.train()
        self.source.set_epoch(epoch)
        tally = EpochTally(self.device)
        step = torch.zeros((), device=self.device, dtype=torch.long)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        bar = tqdm(self.source, total=len(self.source), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   leave=False, disable=not self.progress, unit="batch")
        self.method.prepare(epoch, criterion)
        for batch in bar:
            loss, logits, y = self.method(self.net, batch)
            fault_point("step")
            bad = tally.add(loss, logits, y)
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            step += 1
        check_finite(self.model.state_dict().values(), epoch, bad_steps=tally.reduce(self.ctx).bad_steps,
                     first_bad=int(first_bad), steps=int(step), loss_scaled=self.scaler is not None,
                     world=self.ctx.world, run_dir=self.run_dir, lr=self.cfg.lr,
                     rho=epoch_rho(self.cfg, epoch) if self.cfg.uses_sam else 0.0)
        return tally.stats()

    def evaluate(self, criterion: torch.nn.Module | None, split: str = "test") -> tuple[dict[str, Any], torch.Tensor]:
        """Results on the ``test`` images, or on the held-out ``val`` images."""
        make = self.data.val_batches if split == "val" else self.data.test_batches
        batches = make(self.cfg.eval_batch_size, self.device, self.cfg.channels_last, self.cfg.workers,
                       self.ctx.rank, self.ctx.world)
        return evaluate(self.net, batches, self.data.cls_num_list, criterion, self.ctx, groups=self.groups,
                        autocast=self.autocast)

    def run_epoch(self, epoch: int, members: Sequence[Member] = ()) -> list[EpochResult | None]:
        """The loop's hook: one epoch trained, then evaluated on test (and validation)."""
        lr, rho = self.set_hyperparameters(epoch)
        criterion = self.criterion_for(epoch)
        train_stats = self.train_epoch(epoch, criterion)
        if not evaluated(self.cfg, epoch):  # --eval-every: trained, not measured
            return [({"lr": lr, "rho": rho, **train_stats}, None, None)]
        test, _ = self.evaluate(criterion)
        val = self.evaluate(criterion, "val")[0] if self.val_size else None
        return [({"lr": lr, "rho": rho, **train_stats}, test, val)]

    # ------------------------------------------------------------------ the run
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        member = Member(self.run_dir, self.cfg.epochs, self.state, self.payload, scalars=True,
                        wandb_config=self.cfg.to_dict() if self.cfg.wandb else None)
        run_epochs([member], self, self.ctx, stop_after)
        return self.finish()

    def payload(self, epochs_done: int) -> dict[str, Any]:
        """The checkpoint after ``epochs_done`` epochs (``last.pt`` / ``best.pt`` / ``best_val.pt``)."""
        return training_checkpoint(epochs_done, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                                   meta=self.meta, config=self.cfg.to_dict(), data=self.data,
                                   progress=self.state.checkpoint_fields(), scaler=scaler_state(self.scaler),
                                   step=self.method.built_step().state_dict())

    def finish(self) -> dict[str, Any]:
        """Evaluate the current model, write final.json and the figures (rank 0); return the summary."""
        test, conf = self.evaluate(None)
        summary = training_summary(self.run_dir, self.cfg.epochs, self.state, test, data=self.data,
                                   device=self.device, ctx=self.ctx)
        return write_final(self.run_dir, self.ctx, summary, test, conf, self.data)
