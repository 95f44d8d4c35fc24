"""``--tune``: which parameters of a pretrained model train.

``full`` every parameter; ``linear`` the new head only (the backbone frozen, and kept in eval mode by
``PretrainedNet``); ``bias`` every bias and the head (BitFit); ``lora`` low-rank updates of linear layers
through Hugging Face peft (W x + (alpha / r) B A x, A: r x in, B: out x r, B starting at zero) and the head.
Frozen parameters get ``requires_grad = False``: the optimizer and SAM are handed only the others.
"""

from __future__ import annotations

from torch import nn

from ltsam.errors import UserError
from ltsam.models.pretrained.extras import require

TUNE_MODES = ("full", "linear", "bias", "lora")
ALL_LINEAR = "all-linear"


def lora_targets(net: nn.Module, head: str, targets: str) -> list[str]:
    """The modules LoRA adapts: ``all-linear`` (every ``nn.Linear`` but the head), or the modules whose name
    is, or ends with, one of the comma-separated ``targets`` (``qkv,proj``)."""
    if targets == ALL_LINEAR:
        names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n != head]
    else:
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        names = [n for n, m in net.named_modules() if n and n != head
                 and any(n == t or n.endswith("." + t) for t in wanted)]
    if not names:
        raise UserError(f"--lora-targets {targets}: no layer of this model to adapt; name its linear or conv "
                        f"layers (e.g. qkv,proj,fc1,fc2 for a ViT)")
    return names


def apply_tune(net: nn.Module, head: str, mode: str, lora_rank: int = 8, lora_alpha: float = 16.0,
               targets: str = ALL_LINEAR) -> nn.Module:
    """``net`` with ``mode``'s parameters trainable and the others frozen (LoRA layers injected in place)."""
    if mode not in TUNE_MODES:
        raise UserError(f"unknown --tune {mode!r}; choose one of {', '.join(TUNE_MODES)}")
    if mode == "full":
        return net
    head_params = {id(p) for p in net.get_submodule(head).parameters()}
    if mode == "lora":
        peft = require("peft", "--tune lora")
        config = peft.LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                 target_modules=lora_targets(net, head, targets), bias="none")
        net = peft.inject_adapter_in_model(config, net)
    for name, p in net.named_parameters():
        if mode == "linear":
            train = id(p) in head_params
        elif mode == "bias":
            train = id(p) in head_params or name.rpartition(".")[2] == "bias"
        else:
            train = id(p) in head_params or "lora_" in name
        p.requires_grad_(train)
    return net
