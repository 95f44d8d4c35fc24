"""GLMC as a registered method (``--method glmc``): its defaults, checks, models, sources and step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltsam.data.catalog import DATASETS
from ltsam.errors import UserError
from ltsam.glmc.heads import GLMC_ARCHS, build_glmc_model
from ltsam.glmc.objective import GLMCUpdate, mixing_generator
from ltsam.glmc.source import glmc_source
from ltsam.glmc.weights import cumulative_alpha, label_weights
from ltsam.methods import METHODS, Method, MethodContext
from ltsam.models import MODELS
from ltsam.registry import Option, Settings

if TYPE_CHECKING:
    from ltsam.data.lt_data import LTData

# GLMC's own defaults (batch 64, lr 0.01, wd 5e-3, 200 epochs, cosine; SAM rho 0.05 when on).
GLMC_DEFAULTS: dict[str, Any] = dict(batch_size=64, lr=0.01, wd=5e-3, epochs=200, momentum=0.9, lr_schedule="cosine",
                                     loss="ce", train_rule="none")

OPTIONS = [
    Option("resample_weighting", float, 0.2, "GLMC: q of the re-sampled stream's weights n_c^-q (default 0.2)",
           flags=("--resample-weighting", "--resample_weighting")),
    Option("label_weighting", float, 1.0, "GLMC: gamma of the label weights n_c^-gamma (default 1.0)",
           flags=("--label-weighting", "--label_weighting")),
    Option("contrast_weight", float, 10.0, "GLMC: weight of the consistency loss (default 10)",
           flags=("--contrast-weight", "--contrast_weight"), minimum=0.0),
    Option("mix_beta", float, 1.0, "GLMC: lambda ~ Beta(b, b) (default 1 = the reference)", minimum=0.0),
]


@METHODS.register("glmc", help="global and local mixture consistency (Du et al., CVPR 2023)", options=OPTIONS)
class GLMCMethod(Method):
    """GLMC (Du et al., CVPR 2023) with any registered step on its re-balancing losses."""

    ddp_find_unused_parameters = True  # SAM's ascent leaves the projection heads out of the first backward

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        values = dict(GLMC_DEFAULTS)
        meta = DATASETS.entry(dataset).meta if dataset in DATASETS else {}
        if meta.get("streaming"):  # ImageNet-LT / iNat: ResNeXt-50, GLMC's warm-up + cosine over 90 epochs
            values.update(arch="resnext50_32x4d", lr_schedule="glmc", epochs=meta["defaults"]["epochs"])
        elif dataset == "digits":  # the offline demo's size
            values.update(arch="small_cnn", epochs=30, batch_size=32, lr=0.05, wd=5e-4, imb_factor=0.1)
        else:
            values.update(arch="glmc_resnet34")
        return values

    @classmethod
    def validate(cls, cfg: Settings) -> None:
        if cfg.loss != "ce":
            raise UserError("--method glmc uses its own soft-target losses; drop --loss (or use --loss ce)")
        if cfg.train_rule != "none":
            raise UserError("--method glmc re-balances by itself (re-sampled stream, label weights); drop --train-rule")

    @classmethod
    def archs(cls) -> tuple[str, ...]:
        return MODELS.names() + GLMC_ARCHS.names()

    @classmethod
    def accepts_arch(cls, name: str) -> bool:
        return name in cls.archs()  # GLMC's heads need a backbone of ltsam's own (no timm: family)

    @classmethod
    def model_meta(cls, cfg: Settings, data: LTData) -> dict[str, Any]:
        return dict(super().model_meta(cfg, data), method="glmc")

    @classmethod
    def build_model(cls, meta: dict[str, Any], weights: bool = False) -> nn.Module:
        return build_glmc_model(meta["arch"], meta["num_classes"], meta["in_channels"])

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg, data = ctx.cfg, ctx.data
        self.source = glmc_source(data, cfg.batch_size, cfg.seed, ctx.device, cfg.resample_weighting,
                                  channels_last=cfg.channels_last, workers=cfg.workers, rank=ctx.rank,
                                  world=ctx.world)
        self.step = self.build_step()
        weights = label_weights(data.cls_num_list, cfg.label_weighting).to(ctx.device)
        self.glmc = GLMCUpdate(self.step.optimizer, weights, data.num_classes, cfg.contrast_weight,
                             mixing_generator(cfg.seed, 0), self.step.perturbs, beta=cfg.mix_beta,
                             autocast=ctx.autocast, scaler=ctx.scaler, step=self.step)
        self.alpha = 1.0

    def compile_trial(self, net: nn.Module) -> None:
        a, b = next(iter(self.source))
        net.train()
        sum(o.float().sum() for o in net(a[0])).backward()

    def prepare(self, epoch: int, criterion: nn.Module) -> None:
        self.glmc.reseed(self.ctx.cfg.seed, epoch)
        self.alpha = cumulative_alpha(epoch, self.ctx.cfg.epochs)

    def __call__(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_a, batch_b = batch
        out = self.glmc(net, batch_a, batch_b, self.alpha)
        return out["loss"], out["logits"], out["targets"]
