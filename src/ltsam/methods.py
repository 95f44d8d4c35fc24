"""Training methods: how one batch becomes the objective of one optimisation step.

A method gets an explicit ``MethodContext`` (configuration, data, model, device, precision, rank)
and gives the trainer its batch source, its optimizer step, a per-epoch ``prepare`` and
``__call__(net, batch) -> (loss, logits, targets)``. The update itself is an ``ltsam.optim`` step,
the same for every method, so a SAM variant works for all of them. The epoch loop, evaluation,
checkpoints and metrics are the trainer's.

Class-level hooks let a method own its configuration: ``defaults`` (values it needs unless the user
says otherwise), ``validate``, the architectures it accepts, and how its model is built from a
checkpoint's ``model_meta``. ``erm`` is here; ``glmc`` registers itself from ``ltsam.glmc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.losses import LOSSES, has_mean_weights, has_per_sample
from ltsam.models import MODELS, arch_options, build_model
from ltsam.objectives import accumulated_objective, supervised_objective
from ltsam.optim import STEPS, Step, StepSettings, build_step
from ltsam.registry import Registry, Settings
from ltsam.rules import build_rule

if TYPE_CHECKING:
    from ltsam.data.lt_data import LTData


@dataclass
class MethodContext:
    """What a method may use: nothing else of the trainer."""

    cfg: Settings
    data: LTData
    model: nn.Module
    device: torch.device
    autocast: Callable
    _: KW_ONLY
    scaler: torch.amp.GradScaler | None = None
    rank: int = 0
    world: int = 1


class Method:
    """The base of every method (ERM's hooks are the defaults)."""

    # DDP must tolerate parameters without a gradient in a backward pass (e.g. heads outside SAM's ascent).
    ddp_find_unused_parameters = False

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        """Configuration values the method needs unless the recipe or the user sets them."""
        return {}

    accumulates = False  # its batches split into micro-batches (``--accumulate``)

    @classmethod
    def validate(cls, cfg: Settings) -> None:
        """Refuse settings the method cannot honour (raise ``UserError``)."""

    @classmethod
    def archs(cls) -> tuple[str, ...]:
        """The architectures it accepts, a family as ``prefix:NAME`` (for messages)."""
        return MODELS.choices()

    @classmethod
    def accepts_arch(cls, name: str) -> bool:
        return name in MODELS

    @classmethod
    def model_meta(cls, cfg: Settings, data: LTData) -> dict[str, Any]:
        """What a checkpoint records to rebuild the model (``build_model`` reads it back): plain data; an
        architecture with options (``timm:``) adds their values as ``arch_options``."""
        arch = MODELS.entry(cfg.arch).name if MODELS.family(cfg.arch) else cfg.arch  # clip:ViT-B-16, open_clip's case
        meta = dict(arch=arch, num_classes=data.num_classes, use_norm=bool(cfg.use_norm),
                    in_channels=data.in_channels)
        if getattr(cfg, "head_scale", 1.0) != 1.0:  # recorded only when set: older checkpoints read as before
            meta["head_scale"] = float(cfg.head_scale)
        options = arch_options(cfg.arch, cfg)
        return dict(meta, arch_options=options) if options else meta

    @classmethod
    def build_model(cls, meta: dict[str, Any], weights: bool = False) -> nn.Module:
        """The model ``meta`` describes; ``weights``: with the pretrained weights its options name (a new run)."""
        return build_model(meta["arch"], meta["num_classes"], meta["use_norm"], meta["in_channels"],
                           options=meta.get("arch_options"), weights=weights,
                           head_scale=float(meta.get("head_scale", 1.0)))

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.source: Any = None
        self.step: Step | None = None

    def built_step(self) -> Step:
        """The step the method built in ``__init__`` (every method builds one)."""
        assert self.step is not None, f"{type(self).__name__} built no step"
        return self.step

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.built_step().optimizer

    def build_step(self, params: Any = None, scaled: bool = True) -> Step:
        """The configured ``--optimizer`` step over the model's parameters (SGD when rho is 0 everywhere)."""
        cfg = self.ctx.cfg
        name = cfg.optimizer if cfg.uses_sam else "sgd"
        trainable = [p for p in self.ctx.model.parameters() if p.requires_grad]  # --tune froze the others
        settings = StepSettings.of(cfg, autocast=self.ctx.autocast, scaler=self.ctx.scaler if scaled else None,
                                   cls_num_list=self.ctx.data.cls_num_list)
        step = build_step(name, trainable if params is None else params, settings, config=cfg)
        if self.ctx.world > 1 and not step.supports_ddp:
            trigger = getattr(getattr(step, "frequency", None), "trigger", False) and not step.needs_per_sample
            what = f"--optimizer {name}" + (" --sam-adaptive-trigger" if trigger else "")
            raise UserError(f"{what} takes several backward passes through one forward pass, which "
                            f"DistributedDataParallel does not allow; run it in one process (without torchrun)")
        return step

    def compile_trial(self, net: nn.Module) -> None:
        """One forward/backward of the compiled module, so a compile failure shows before training."""
        raise NotImplementedError

    def prepare(self, epoch: int, criterion: nn.Module) -> None:
        """Called at each epoch start with the epoch's criterion."""

    def __call__(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", "method")


@METHODS.register("erm", help="losses + train rules (the paper's methods)")
class ERMMethod(Method):
    """Empirical risk minimisation with the configured loss and train rule (any registered step)."""

    accumulates = True

    @classmethod
    def validate(cls, cfg: Settings) -> None:
        """A class-splitting step needs a loss with per-sample losses: refused here, before the run folder."""
        step = STEPS.entry(cfg.optimizer).obj if cfg.uses_sam else None
        if getattr(step, "needs_per_sample", False) and has_per_sample(cfg.loss) is False:
            raise UserError(f"--optimizer {cfg.optimizer} splits the loss by class and needs per-sample losses; "
                            f"--loss {cfg.loss} has no per_sample(logits, targets) method — choose another --loss "
                            f"(every built-in loss has one) or add the method to it")
        if getattr(cfg, "accumulate", 1) > 1:
            name = cfg.optimizer if cfg.uses_sam else "sgd"
            if not STEPS.entry(name).meta.get("accumulates"):
                takes = ", ".join(n for n in STEPS.names() if STEPS.entry(n).meta.get("accumulates"))
                raise UserError(f"--accumulate: --optimizer {name} takes several backward passes of parts of the "
                                f"loss, which micro-batches cannot give; use one of {takes}, or drop --accumulate")
            if has_mean_weights(cfg.loss) is False:
                raise UserError(f"--accumulate weighs micro-batches by the loss's per-sample weights; --loss "
                                f"{cfg.loss} has no mean_weights(targets) method (add one, or drop --accumulate)")
            if cfg.accumulate > cfg.batch_size:
                raise UserError(f"--accumulate {cfg.accumulate} splits a batch of {cfg.batch_size} into more "
                                "micro-batches than it has images; lower --accumulate")

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg = ctx.cfg
        weights = build_rule(cfg.train_rule, cfg).sample_weights(ctx.data.cls_num_list)
        self.source = ctx.data.train_source(cfg.batch_size, cfg.seed, ctx.device, weights,
                                            channels_last=cfg.channels_last, workers=cfg.workers,
                                            rank=ctx.rank, world=ctx.world)
        self.step = self.build_step()
        self.criterion: nn.Module | None = None

    def compile_trial(self, net: nn.Module) -> None:
        x, y = next(iter(self.source))
        net.train()
        nn.functional.cross_entropy(net(x), y).backward()

    def prepare(self, epoch: int, criterion: nn.Module) -> None:
        if self.step is not None and self.step.needs_per_sample and not hasattr(criterion, "per_sample"):
            raise UserError(f"--optimizer {self.ctx.cfg.optimizer} splits the loss by class and needs per-sample "
                            f"losses; --loss {self.ctx.cfg.loss} has no per_sample(logits, targets) method")
        self.criterion = criterion

    def __call__(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        step, criterion = self.built_step(), cast(nn.Module, self.criterion)  # set by prepare
        parts = int(getattr(self.ctx.cfg, "accumulate", 1))
        objective = (supervised_objective(x, y, criterion, self.ctx.autocast, step.needs_per_sample) if parts == 1
                     else accumulated_objective(x, y, criterion, parts, step.backward, self.ctx.autocast))
        out = step(net, objective).last
        return out.report.detach(), out.logits.detach(), y


def uses_cosine_head(cfg: Settings) -> bool:
    """The normalised (cosine) head: ``--head``, else the loss's own choice (LDAM's)."""
    if cfg.use_norm is not None:
        return bool(cfg.use_norm)
    return bool(LOSSES.entry(cfg.loss).meta.get("cosine_head", False))
