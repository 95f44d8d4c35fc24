"""``--tune adapter``: AdaptFormer's parallel bottleneck adapters (Chen et al., NeurIPS 2022) on a ViT's MLPs.

Each transformer block (timm's ``vision_transformer.Block``, open_clip's ``ResidualAttentionBlock``) gets an
adapter beside its MLP branch, reading the same layer norm the MLP reads:

    x' = x + attn(LN1(x)),    out = x' + MLP(LN2(x')) + s * up(ReLU(down(LN2(x'))))

``down``: d -> r (PyTorch's linear initialisation, bias zero), ``up``: r -> d (weight and bias zero, so the
untrained model is the backbone exactly), ``s`` the scale (``--adapter-scale``, AdaptFormer's 0.1), ``r`` the
bottleneck (``--adapter-dim``, AdaptFormer's 64). The adapter sits outside the block's layer scale and drop path,
as in AdaptFormer's code. The blocks' code is not copied: two forward hooks do it, one on the block's second layer
norm (computes the adapter's output from LN2(x')) and one on the block (adds it to the block's output).
AdaptFormer's adapter dropout (0.1) is left out: the adapter is deterministic. Hugging Face peft (0.21) has no
such tuner (its ``ia3`` rescales activations, ``adaption_prompt`` is LLaMA-Adapter's prompts), hence this module.

``--adapter-style lift`` is LIFT's variant (Shi et al., ICML 2024, its ``AdaptFormer`` module): the adapter reads
the block's residual stream x' itself through a layer norm of its own, and its scale is learned (from 1):

    out = x' + MLP(LN2(x')) + s up(ReLU(down(LN_a(x')))),    s, LN_a, down, up trained

with ``down``'s weight Kaiming-normal (a = sqrt 5) and bias zero, ``up`` zero as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltsam.errors import UserError

# (module, class) of the blocks adapted -> the name of their layer norm in front of the MLP
BLOCKS = {("timm.models.vision_transformer", "Block"): "norm2",
          ("open_clip.transformer", "ResidualAttentionBlock"): "ln_2"}
CHILD = "adapter"  # the adapter's attribute name in its block (its parameters: ``...blocks.0.adapter.down.weight``)
STYLES = ("adaptformer", "lift")
"""``--adapter-style``: AdaptFormer's adapter (reads LN2's output, fixed scale) or LIFT's (own layer norm on the
block's residual stream, learned scale)."""


def check_style(style: str) -> None:
    """One line for an unknown ``--adapter-style`` (before a run starts, and where an adapter is built)."""
    if style not in STYLES:
        raise UserError(f"unknown --adapter-style {style!r}; choose one of {', '.join(STYLES)}")


class Adapter(nn.Module):
    """``s * up(ReLU(down(h)))``, ``h`` the block's LN2 output (``style`` adaptformer) or its own layer norm of
    the block's residual stream (``lift``, ``s`` learned); hooked onto its block by :func:`add_adapters`."""

    def __init__(self, dim: int, bottleneck: int, scale: float, like: torch.Tensor | None = None,
                 style: str = "adaptformer"):
        super().__init__()
        check_style(style)
        kw: dict[str, Any] = {} if like is None else dict(dtype=like.dtype, device=like.device)
        self.norm = nn.LayerNorm(dim, **kw) if style == "lift" else None
        self.down = nn.Linear(dim, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, dim, **kw)
        self.scale: float | nn.Parameter = nn.Parameter(torch.ones(1, **kw)) if style == "lift" else float(scale)
        if style == "lift":
            nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._pending: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            h = self.norm(h)
        return self.scale * self.up(F.relu(self.down(h)))

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """Forward hook on LN2: the adapter's output from LN2(x') (LIFT's: from x', LN2's input), kept until the
        block returns."""
        self._pending = self(inputs[0] if self.norm is not None else output)

    def _add(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the block: its output plus the adapter's."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError(f"the adapter of a {type(module).__name__} saw no LN2 output in its forward")
        return output + pending


def adapted_blocks(net: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """The transformer blocks an adapter goes to: (name, block, its LN2)."""
    found = []
    for name, module in net.named_modules():
        norm = BLOCKS.get((type(module).__module__, type(module).__qualname__))
        if norm is not None:
            found.append((name, module, module.get_submodule(norm)))
    return found


def _none(what: str) -> UserError:
    return UserError("--tune adapter adds AdaptFormer adapters to ViT transformer blocks (timm's Block, open_clip's "
                     f"ResidualAttentionBlock); {what} has none (use --tune lora, bias or linear)")


def check_blocks(make: Callable[[], nn.Module], arch: str) -> None:
    """Before a run starts: one line if the architecture ``make`` builds (on the meta device: no memory, no weights)
    has no block to adapt. A model that cannot be built there is left to :func:`add_adapters`'s own check."""
    try:
        with torch.device("meta"):
            net = make()
    except Exception:  # a pre-check only: the build itself refuses the same way
        return
    if not adapted_blocks(net):
        raise _none(f"--arch {arch}")


def add_adapters(net: nn.Module, bottleneck: int, scale: float, style: str = "adaptformer") -> list[str]:
    """An adapter (of ``style``) in every transformer block of ``net``, in place; the blocks' names (one line if
    none)."""
    blocks = adapted_blocks(net)
    if not blocks:
        raise _none("this model")
    for name, block, norm in blocks:
        if hasattr(block, CHILD):
            raise UserError(f"--tune adapter: block {name} already has an attribute {CHILD!r}")
        weight = getattr(norm, "weight", None)
        shape = getattr(norm, "normalized_shape", None)
        dim = int(shape[-1]) if shape else int(weight.shape[-1])  # type: ignore[union-attr]
        if bottleneck > dim:  # before allocating: 2 x d x r weights per block
            raise UserError(f"--adapter-dim {bottleneck}: wider than block {name}'s width {dim}; a bottleneck is "
                            f"at most {dim} (AdaptFormer's 64 for ViT-B's 768)")
        adapter = Adapter(dim, bottleneck, scale, weight if isinstance(weight, torch.Tensor) else None, style)
        block.add_module(CHILD, adapter)
        norm.register_forward_hook(adapter._capture)
        block.register_forward_hook(adapter._add)
    return [name for name, _, _ in blocks]
