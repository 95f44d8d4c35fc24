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
"""

from __future__ import annotations

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


class Adapter(nn.Module):
    """``s * up(ReLU(down(h)))``, ``h`` the block's LN2 output; hooked onto its block by :func:`add_adapters`."""

    def __init__(self, dim: int, bottleneck: int, scale: float, like: torch.Tensor | None = None):
        super().__init__()
        kw: dict[str, Any] = {} if like is None else dict(dtype=like.dtype, device=like.device)
        self.down = nn.Linear(dim, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, dim, **kw)
        self.scale = float(scale)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._pending: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(h)))

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """Forward hook on LN2: the adapter's output from LN2(x'), kept until the block returns."""
        self._pending = self(output)

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


def add_adapters(net: nn.Module, bottleneck: int, scale: float) -> list[str]:
    """An adapter in every transformer block of ``net``, in place; the blocks' names (one line if none)."""
    blocks = adapted_blocks(net)
    if not blocks:
        raise _none("this model")
    for name, block, norm in blocks:
        if hasattr(block, CHILD):
            raise UserError(f"--tune adapter: block {name} already has an attribute {CHILD!r}")
        weight = getattr(norm, "weight", None)
        shape = getattr(norm, "normalized_shape", None)
        dim = int(shape[-1]) if shape else int(weight.shape[-1])  # type: ignore[union-attr]
        adapter = Adapter(dim, bottleneck, scale, weight if isinstance(weight, torch.Tensor) else None)
        block.add_module(CHILD, adapter)
        norm.register_forward_hook(adapter._capture)
        block.register_forward_hook(adapter._add)
    return [name for name, _, _ in blocks]
