"""``--arch clip:NAME``: the image tower of an open_clip model, with a new head for the data set's classes.

``NAME`` is any name ``open_clip.list_models()`` lists, matched without regard to case (ltsam lower-cases
``--arch``; open_clip's names are ``ViT-B-16``, ``RN50``); the checkpoint's ``model_meta`` records the
canonical spelling. Weights (``--pretrained``) come through open_clip's own loader: ``hub`` (open_clip's tag
``openai`` where the model has it, else its first listed tag), a tag (``laion2b_s34b_b88k``), a file (a
``torch.save`` state dict of the whole CLIP model, read with ``weights_only=True``, or a ``.safetensors``
file), or ``none``. The model keeps ``model.visual`` (its output projection included: the joint embedding
space) and replaces the rest by the head; ``--head-init text`` sets a cosine head to the normalised text
embeddings of ``"a photo of a {class name}."`` (CLIP's zero-shot classifier) at the start of a new run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.models.normed_linear import NormedLinear
from ltsam.models.pretrained.adapters import check_blocks
from ltsam.models.pretrained.extras import require
from ltsam.models.pretrained.net import PretrainedNet
from ltsam.models.pretrained.timm_models import HUB, NONE
from ltsam.models.pretrained.timm_models import OPTIONS as TIMM_OPTIONS
from ltsam.models.pretrained.tuning import ALL_LINEAR, apply_tune
from ltsam.models.pretrained.weights import fetched, first_line, load_errors
from ltsam.registry import Option, Settings

HEAD_INITS = ("random", "text")
PROMPT = "a photo of a {}."

OPTIONS = (*TIMM_OPTIONS, Option(
    "head_init", str, "random", "the new head's initial weights: random, or text (clip: models: a cosine head "
    "set to the normalised text embeddings of 'a photo of a {class name}.', CLIP's zero-shot classifier)",
    choices=HEAD_INITS))


class ClipImageClassifier(nn.Module):
    """An open_clip image tower (``visual``: image -> joint embedding) and a classifier ``head``."""

    def __init__(self, visual: nn.Module, head: nn.Module, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.head = head
        self.num_features = embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (the tower's output projection included)."""
        return self.visual(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's interface (``PretrainedNet.features``): the head's input, or the logits."""
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def canonical_name(open_clip: Any, member: str) -> str:
    """open_clip's own spelling of ``member`` (matched without regard to case), or one line naming the miss."""
    names = list(open_clip.list_models())
    if member in names:
        return member
    matches = [n for n in names if n.lower() == member.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"clip:{member} matches several open_clip models ({', '.join(matches)}) that differ only in "
                        f"case; ltsam cannot tell them apart")
    near = [n for n in names if member.lower()[:5] in n.lower()][:8]
    raise UserError(f"open_clip has no model {member!r}" + (f" (near: {', '.join(near)})" if near else "")
                    + "; list them with: python -c \"import open_clip; print(open_clip.list_models())\"")


def hub_tag(open_clip: Any, name: str) -> str:
    """The tag ``--pretrained hub`` stands for: ``openai`` where ``name`` has it, else its first listed tag."""
    tags = list(open_clip.list_pretrained_tags_by_model(name))
    if not tags:
        raise UserError(f"open_clip lists no pretrained weights for {name}; pass --pretrained PATH (a state-dict "
                        f".pt / .safetensors file of the whole CLIP model) or --pretrained none")
    return "openai" if "openai" in tags else tags[0]


def pretrained_tag(open_clip: Any, name: str, pretrained: str) -> str | None:
    """The open_clip tag ``pretrained`` names (``hub``: :func:`hub_tag`), None for a file or ``none``. A value
    that is one of the model's tags is the tag, also where a file of that name exists (``./NAME`` is the file):
    a checkpoint's rebuild reads the same value the same way without looking at files."""
    if pretrained == NONE:
        return None
    if pretrained == HUB:
        return hub_tag(open_clip, name)
    tag = pretrained.lower().replace("-", "_")  # open_clip's own normalisation of tags
    return tag if tag in open_clip.list_pretrained_tags_by_model(name) else None


def quick_gelu(open_clip: Any, name: str, pretrained: str) -> bool:
    """Whether the weights ``pretrained`` names were trained with QuickGELU (OpenAI's and a few others: open_clip's
    ``quick_gelu`` of the tag); open_clip builds a model config's own activation (GELU for ``ViT-B-16``) and
    only warns of the mismatch. A file or ``none``: the config's (the ``-quickgelu`` configs for OpenAI's)."""
    tag = pretrained_tag(open_clip, name, pretrained)
    return bool(tag and open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))


def create_clip(open_clip: Any, name: str, pretrained: str, weights: bool, input_size: int | None) -> nn.Module:
    """The whole open_clip model ``name`` with ``pretrained``'s weights (``weights=False``: random, no network),
    with the activation those weights were trained with (also when ``weights=False``: a checkpoint's rebuild)."""
    kw: dict[str, Any] = dict(pretrained_image=False, pretrained_text=False,
                              force_quick_gelu=quick_gelu(open_clip, name, pretrained))
    if input_size is not None:
        kw["force_image_size"] = input_size
    if not weights or pretrained == NONE:
        return open_clip.create_model(name, pretrained=None, **kw)
    tag = pretrained_tag(open_clip, name, pretrained)
    if tag is not None:
        return fetched(lambda: open_clip.create_model(name, pretrained=tag, **kw), f"clip:{name}'s weights {tag!r}",
                       (RuntimeError, OSError))  # open_clip wraps a failed download in a RuntimeError
    path = Path(pretrained).expanduser()
    if not path.is_file():
        tags = list(open_clip.list_pretrained_tags_by_model(name))
        what = "a folder: pass the weights file in it" if path.is_dir() else "neither a file nor a tag of " + name
        raise UserError(f"--pretrained {pretrained}: {what} (a state-dict .pt / .safetensors file of the whole CLIP "
                        f"model, hub, none, or a tag: {', '.join(tags) or 'open_clip lists none'})")
    try:
        return open_clip.create_model(name, pretrained=str(path), **kw)
    except load_errors() as exc:
        raise UserError(f"--pretrained {pretrained}: not weights of clip:{name} ({first_line(exc)})") from None


def clip_factory(member: str) -> Any:
    """The model factory of ``clip:member`` (checked now: open_clip importable, the name known to it); the factory's
    ``member`` attribute is open_clip's canonical spelling (the registry names the entry with it)."""
    open_clip = require("open_clip", f"--arch clip:{member}")
    name = canonical_name(open_clip, member)

    def build(num_classes: int, use_norm: bool, in_channels: int, *, pretrained: str = HUB, tune: str = "full",
              lora_rank: int = 8, lora_alpha: float = 16.0, lora_targets: str = ALL_LINEAR,
              input_size: int | None = None, adapter_dim: int = 64, adapter_scale: float = 0.1,
              adapter_style: str = "adaptformer", feature_cache: bool = False, head_init: str = "random",
              weights: bool = False) -> nn.Module:
        model = create_clip(open_clip, name, pretrained, weights, input_size)
        visual: nn.Module = model.visual  # type: ignore[assignment]
        embed_dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])  # type: ignore[index]
        head = NormedLinear(embed_dim, num_classes) if use_norm else nn.Linear(embed_dim, num_classes)
        net = apply_tune(ClipImageClassifier(visual, head, embed_dim), "head", tune,
                         lora_rank=lora_rank, lora_alpha=lora_alpha, targets=lora_targets,
                         adapter_dim=adapter_dim, adapter_scale=adapter_scale, adapter_style=adapter_style)
        cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})  # open_clip's: size, mean, std, interpolation
        size = cfg.get("size", getattr(visual, "image_size", 224))
        size = size if isinstance(size, int) else max(size)
        mean = cfg.get("mean", getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        return PretrainedNet(net, "head", input_size or int(size), str(cfg.get("interpolation", "bicubic")), mean,
                             std, frozen_eval=tune == "linear", feature_input=feature_cache)

    build.member = name  # type: ignore[attr-defined]
    return build


def prompts(classes: list[str]) -> list[str]:
    """The prompts of ``--head-init text``: ``"a photo of a {class name}."`` (underscores read as spaces)."""
    return [PROMPT.format(str(c).replace("_", " ")) for c in classes]


def text_head(name: str, pretrained: str, classes: list[str], input_size: int | None = None) -> torch.Tensor:
    """The L2-normalised text embeddings of the classes' prompts (classes x embed_dim) from ``name``'s text tower
    with ``pretrained``'s weights."""
    open_clip = require("open_clip", f"--arch clip:{name}")
    model = create_clip(open_clip, name, pretrained, True, input_size).eval()
    tokens = open_clip.get_tokenizer(name)(prompts(classes))
    with torch.no_grad():
        return nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)  # type: ignore[operator]


def init_model(model: nn.Module, cfg: Settings, classes: list[str]) -> None:
    """A new run's ``--head-init text``: the cosine head's class vectors set to the prompts' text embeddings."""
    if cfg.head_init != "text":
        return
    head = model.get_submodule("net.head")
    assert isinstance(head, NormedLinear)
    open_clip = require("open_clip", f"--arch {cfg.arch}")
    name = canonical_name(open_clip, str(cfg.arch).partition(":")[2])
    weight = text_head(name, cfg.pretrained, classes, cfg.input_size)
    with torch.no_grad():
        head.weight.copy_(weight.T.to(head.weight.dtype))


def resolve(cfg: Settings) -> None:
    """As for timm: (pixels in [0, 1], ``--tune``), and ``--head-init text``'s needs."""
    from ltsam.models.pretrained.timm_models import resolve as timm_resolve

    timm_resolve(cfg)
    if cfg.tune == "adapter":
        open_clip = require("open_clip", f"--arch {cfg.arch}")
        name = canonical_name(open_clip, str(cfg.arch).partition(":")[2])
        check_blocks(lambda: open_clip.create_model(name, pretrained=None, device="meta").visual, cfg.arch)
    if cfg.head_init not in HEAD_INITS:
        raise UserError(f"unknown --head-init {cfg.head_init!r}; choose one of {', '.join(HEAD_INITS)}")
    if cfg.head_init == "text":
        if not cfg.use_norm:
            raise UserError("--head-init text sets a cosine head's class vectors; add --head cosine")
        if cfg.pretrained == NONE:
            raise UserError("--head-init text embeds the class names with the pretrained text tower; "
                            "--pretrained none has none (give hub, a tag or PATH)")
