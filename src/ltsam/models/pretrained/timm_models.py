"""``--arch timm:NAME``: any model timm builds, its head replaced for the data set's classes.

Weights (``--pretrained``) come through timm's own loader: ``hub`` (timm's default source for NAME, a
``.tag`` in NAME picks one), a local file (a ``torch.save`` state dict, read with ``weights_only=True``, or a
``.safetensors`` file) or a folder timm can read, or ``none`` (random initialisation). Only a new run loads
them: a checkpoint rebuilds the architecture (with its ``--tune`` layers) and then loads its own weights, so
``eval``, ``hessian``, ``finetune`` and ``--resume`` need no network and no weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ltsam.errors import UserError
from ltsam.models.normed_linear import NormedLinear
from ltsam.models.pretrained.adapters import STYLES, check_blocks, check_style
from ltsam.models.pretrained.extras import require
from ltsam.models.pretrained.net import PretrainedNet
from ltsam.models.pretrained.tuning import ALL_LINEAR, TUNE_MODES, apply_tune
from ltsam.models.pretrained.weights import (
    check_fitted,
    fetched,
    first_line,
    load_errors,
    load_report,
)
from ltsam.registry import Option, Settings

HUB, NONE = "hub", "none"

OPTIONS = (
    Option("pretrained", str, HUB, "pretrained weights of a timm: or clip: model: hub (the library's own source; "
           "needs network once, then its cache; clip: open_clip's tag openai, else the model's first tag), none "
           "(random initialisation), PATH (a state-dict .pt / .safetensors file; timm: also a folder it reads), "
           "or an open_clip TAG (clip: laion2b_s34b_b88k)", keep_case=True, metavar="hub|none|PATH|TAG"),
    Option("tune", str, "full", "what trains: full, linear (the new head on a frozen backbone), bias (biases + "
           "head), lora (LoRA layers + head; peft), adapter (AdaptFormer bottleneck adapters in each ViT block + head)",
           choices=TUNE_MODES),
    Option("lora_rank", int, 8, "LoRA rank r", minimum=1),
    Option("lora_alpha", float, 16.0, "LoRA alpha (the update is scaled by alpha / r)", minimum=0.0),
    Option("lora_targets", str, ALL_LINEAR, "layers LoRA adapts: all-linear (every linear layer but the head) or "
           "comma-separated module names (qkv,proj,fc1,fc2)", keep_case=True),
    Option("adapter_dim", int, 64, "--tune adapter: the adapters' bottleneck width r (AdaptFormer's 64)", minimum=1),
    Option("adapter_scale", float, 0.1, "--tune adapter: the scale s of the adapters' output (AdaptFormer's 0.1)"),
    Option("adapter_style", str, "adaptformer", "--tune adapter: adaptformer (reads the block's LN2 output, fixed "
           "scale) or lift (LIFT's: its own layer norm of the block's input to the MLP, learned scale from 1)",
           choices=STYLES),
    Option("feature_cache", bool, False, "--tune linear: compute the frozen backbone's features of the "
           "un-augmented training images once and train the head on them (turns off per-epoch crop and flip; "
           "in-memory data sets)"),
    Option("input_size", int, None, "the model's input size in pixels (default: its pretrained config's); "
           "images are resized to it on the device", minimum=1),
)


def _timm(member: str) -> Any:
    timm = require("timm", f"--arch timm:{member}")
    if not timm.is_model(member):
        raise UserError(f"timm has no model {member!r}; list them with: python -c \"import timm; "
                        f"print(timm.list_models('*{member.partition('.')[0][:12]}*'))\"")
    return timm


def _create(timm: Any, member: str, num_classes: int, pretrained: str, input_size: int | None,
            weights: bool) -> nn.Module:
    kw: dict[str, Any] = dict(num_classes=num_classes)
    if input_size is not None and _fixed_size(timm, member):
        kw["img_size"] = input_size  # position embeddings sized for it (ViTs); others take any size
    if not weights or pretrained == NONE:
        return timm.create_model(member, pretrained=False, **kw)
    if pretrained == HUB:
        return fetched(lambda: timm.create_model(member, pretrained=True, **kw),
                       f"timm:{member}'s pretrained weights")
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise UserError(f"--pretrained {pretrained}: no such file or folder; give hub, none, or a weights file")
    overlay = dict(source="local-dir", file=str(path)) if path.is_dir() else dict(file=str(path))
    try:
        with load_report(timm.models._builder) as report:
            net = timm.create_model(member, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    except load_errors() as exc:
        raise UserError(f"--pretrained {pretrained}: not weights of timm:{member} ({first_line(exc)})") from None
    check_fitted(net, head_path(net), report, f"{pretrained} (timm:{member})")
    return net


def head_path(net: nn.Module) -> str:
    """The attribute path of a timm model's classifier (its pretrained config's ``classifier``)."""
    head = getattr(net, "pretrained_cfg", {}).get("classifier", "head")
    return str(head[0] if isinstance(head, (tuple, list)) else head)


def _fixed_size(timm: Any, member: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(member) or timm.models.get_pretrained_cfg(member.partition(".")[0])
    return bool(getattr(cfg, "fixed_input_size", False))


def _cosine_head(net: nn.Module, path: str, num_classes: int) -> None:
    old = net.get_submodule(path)
    if not isinstance(old, nn.Linear):
        raise UserError(f"the cosine head (--head cosine, LDAM) replaces a linear classifier; this model's {path} is "
                        f"a {type(old).__name__}; use --head linear")
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, NormedLinear(old.in_features, num_classes))


def timm_factory(member: str) -> Any:
    """The model factory of ``timm:member`` (checked now: timm importable, the name known to it)."""
    timm = _timm(member)

    def build(num_classes: int, use_norm: bool, in_channels: int, *, pretrained: str = HUB, tune: str = "full",
              lora_rank: int = 8, lora_alpha: float = 16.0, lora_targets: str = ALL_LINEAR,
              input_size: int | None = None, adapter_dim: int = 64, adapter_scale: float = 0.1,
              adapter_style: str = "adaptformer", feature_cache: bool = False, weights: bool = False) -> nn.Module:
        net = _create(timm, member, num_classes, pretrained, input_size, weights)
        data = timm.data.resolve_data_config(model=net)
        head = head_path(net)
        if use_norm:
            _cosine_head(net, head, num_classes)
        net = apply_tune(net, head, tune, lora_rank=lora_rank, lora_alpha=lora_alpha, targets=lora_targets,
                         adapter_dim=adapter_dim, adapter_scale=adapter_scale, adapter_style=adapter_style)
        size = input_size or int(data["input_size"][-1])
        return PretrainedNet(net, head, size, str(data.get("interpolation", "bilinear")), data["mean"],
                             data["std"], frozen_eval=tune == "linear", feature_input=feature_cache)

    return build


def resolve(cfg: Settings) -> None:
    """A pretrained model normalises its own input: the data hands it pixels in [0, 1]."""
    if cfg.norm not in (None, "none"):
        raise UserError(f"--arch {cfg.arch} normalises its input with its own mean and std; drop --norm {cfg.norm}")
    cfg.norm = "none"
    if cfg.tune not in TUNE_MODES:
        raise UserError(f"unknown --tune {cfg.tune!r}; choose one of {', '.join(TUNE_MODES)}")
    check_style(cfg.adapter_style)
    if cfg.tune == "lora":
        require("peft", "--tune lora")  # before the run folder is made
    if cfg.feature_cache:
        from ltsam.data.catalog import DATASETS

        if cfg.tune != "linear":
            raise UserError(f"--feature-cache caches a frozen backbone's features: it needs --tune linear, not "
                            f"--tune {cfg.tune}")
        if DATASETS.entry(cfg.dataset).meta.get("streaming"):
            raise UserError(f"--feature-cache needs an in-memory data set; {cfg.dataset} streams from disk")
    if cfg.tune == "adapter" and str(cfg.arch).startswith("timm:"):
        timm = require("timm", f"--arch {cfg.arch}")
        check_blocks(lambda: timm.create_model(str(cfg.arch).partition(":")[2], pretrained=False), cfg.arch)
