"""``--tune``: which parameters of a pretrained model train.

``full`` every parameter; ``linear`` the new head only (the backbone frozen, and kept in eval mode by
``PretrainedNet``); ``bias`` every bias (``*.bias``, ``*_bias``) and the head (BitFit); ``lora`` low-rank updates
of linear layers through Hugging Face peft (W x + (alpha / r) B A x, A: r x in, B: out x r, B starting at zero)
and the head; ``adapter`` AdaptFormer's parallel bottleneck adapters in every ViT block (``adapters``) and the
head.
Frozen parameters get ``requires_grad = False``: the optimizer and SAM are handed only the others.

``nn.MultiheadAttention`` (open_clip's ViTs) has no linear layer peft can wrap: its forward reads
``in_proj_weight`` and ``out_proj.weight`` directly. peft's own MultiheadAttention LoRA merges the update into
those weights before each forward and subtracts it after, which drifts the frozen weights by round-off and
replaces their Parameter objects every call; ltsam adapts them instead with a parametrization
(``torch.nn.utils.parametrize``): the weight read is W + (alpha / r) B A, W itself untouched.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ltsam.errors import UserError
from ltsam.models.pretrained.adapters import CHILD, add_adapters
from ltsam.models.pretrained.extras import require

TUNE_MODES = ("full", "linear", "bias", "lora", "adapter")
ALL_LINEAR = "all-linear"
LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)
"""The layers ``--lora-targets`` may name: peft's LoRA layers, and attention (ltsam's own, :func:`lora_attention`)."""


def lora_targets(net: nn.Module, head: str, targets: str) -> list[str]:
    """The modules LoRA adapts: ``all-linear`` (every ``nn.Linear`` but the head), or the modules whose name
    is, or ends with, one of the comma-separated ``targets`` (``qkv,proj``)."""
    if targets == ALL_LINEAR:  # nn.MultiheadAttention (open_clip's ViTs): its in_proj and out_proj (lora_attention)
        attention = [n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
        names = attention + [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n != head
                             and not any(n.startswith(a + ".") for a in attention)]  # out_proj: inside the MHA
    else:
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        names = [n for n, m in net.named_modules() if n and n != head
                 and any(n == t or n.endswith("." + t) for t in wanted)]
    if not names:
        raise UserError(f"--lora-targets {targets}: no layer of this model to adapt; name its linear or conv "
                        f"layers (e.g. qkv,proj,fc1,fc2 for a ViT)")
    for name in names:
        if not isinstance(net.get_submodule(name), LORA_LAYERS):
            raise UserError(f"--lora-targets {targets}: {name} is a {type(net.get_submodule(name)).__name__}; LoRA "
                            f"adapts linear, conv, embedding and attention layers (e.g. qkv,proj,fc1,fc2 for a ViT)")
    return names


def check_rank(net: nn.Module, names: list[str], rank: int) -> None:
    """One line, before any LoRA weight is allocated, if ``rank`` exceeds the narrower side of a target layer (a
    rank-r update of an m x n weight needs r <= min(m, n): a larger r adds parameters and no freedom)."""
    for name in names:
        width = _narrow_side(net.get_submodule(name))
        if rank > width:
            raise UserError(f"--lora-rank {rank}: larger than layer {name}'s narrower side ({width}); give at most "
                            f"{width}")


def _narrow_side(layer: nn.Module) -> int:
    if isinstance(layer, nn.MultiheadAttention):
        return int(layer.embed_dim)
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    if isinstance(layer, nn.Embedding):
        return min(layer.num_embeddings, layer.embedding_dim)
    assert isinstance(layer, nn.modules.conv._ConvNd)
    return min(layer.in_channels, layer.out_channels)


class LoRADelta(nn.Module):
    """A parametrization ``W -> W + (alpha / r) B A`` (A: r x in, Kaiming-uniform as peft's; B: out x r, zero)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_B @ self.lora_A)


def lora_attention(attn: nn.MultiheadAttention, rank: int, alpha: float) -> None:
    """LoRA on an attention layer's packed q/k/v projection and its output projection, in place."""
    if not attn._qkv_same_embed_dim:
        raise UserError("--tune lora: an attention layer with separate q/k/v sizes is not supported; name its other "
                        "layers in --lora-targets")
    parametrize.register_parametrization(attn, "in_proj_weight", LoRADelta(attn.in_proj_weight, rank, alpha))
    out = attn.out_proj
    parametrize.register_parametrization(out, "weight", LoRADelta(out.weight, rank, alpha))


def apply_tune(net: nn.Module, head: str, mode: str, *, lora_rank: int = 8, lora_alpha: float = 16.0,
               targets: str = ALL_LINEAR, adapter_dim: int = 64, adapter_scale: float = 0.1,
               adapter_style: str = "adaptformer") -> nn.Module:
    """``net`` with ``mode``'s parameters trainable and the others frozen (LoRA layers injected in place)."""
    if mode not in TUNE_MODES:
        raise UserError(f"unknown --tune {mode!r}; choose one of {', '.join(TUNE_MODES)}")
    if mode == "full":
        return net
    head_params = {id(p) for p in net.get_submodule(head).parameters()}
    if mode == "lora":
        peft = require("peft", "--tune lora")
        names = lora_targets(net, head, targets)
        check_rank(net, names, lora_rank)
        attention = [n for n in names if isinstance(net.get_submodule(n), nn.MultiheadAttention)]
        inside = [n for n in names if any(n.startswith(a + ".") for a in attention)]  # out_proj: done with its MHA
        for name in attention:
            lora_attention(net.get_submodule(name), lora_rank, lora_alpha)  # type: ignore[arg-type]
        others = [n for n in names if n not in attention and n not in inside]
        if others:
            config = peft.LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=others,
                                     bias="none")
            net = peft.inject_adapter_in_model(config, net)
    if mode == "adapter":
        add_adapters(net, adapter_dim, adapter_scale, adapter_style)
    for name, p in net.named_parameters():
        if mode == "linear":
            train = id(p) in head_params
        elif mode == "bias":
            leaf = name.rpartition(".")[2]  # open_clip's attention: in_proj_bias
            train = id(p) in head_params or leaf == "bias" or leaf.endswith("_bias")
        elif mode == "adapter":
            train = id(p) in head_params or f".{CHILD}." in f".{name}"
        else:
            train = id(p) in head_params or "lora_" in name
        p.requires_grad_(train)
    return net
