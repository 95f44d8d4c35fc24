"""G models of one architecture as one module: their parameters and buffers stacked along a new first
dimension and the architecture applied to each member's slice through ``torch.func`` (``vmap`` of
``functional_call``), which turns convolutions into grouped ones and keeps each member's batch-norm
statistics its own. No second copy of any architecture exists: the members' own module is the template.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

MODES = ("vmap", "loop")
"""How the members run: ``vmap`` (one batched call per layer: grouped convolutions, batched matmuls; fast on
a GPU) or ``loop`` (each member's slice through the architecture in turn: a CPU's grouped convolutions are
slower than separate ones)."""


def _slot(name: str) -> str:
    """A stacked tensor's attribute name for the member's dotted name (``layer1.0.conv1.weight``)."""
    return name.replace(".", "__")


class PackedModel(nn.Module):
    """``forward(x)`` with ``x`` of shape (G, B, ...) gives (G, B, classes): member g's model on ``x[g]``;
    ``shared_input=True`` reads one (B, ...) batch for every member (evaluation on one test set). ``mode``:
    one of :data:`MODES`.

    Parameters and buffers are (G, ...) tensors; member g's own ``state_dict`` is :meth:`member_state`.
    Gradients never mix members: the output of member g depends on slice g only.
    """

    def __init__(self, models: Sequence[nn.Module], mode: str = "vmap"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not models:
            raise ValueError("a pack needs at least one member")
        self.size = len(models)
        self.mode = mode
        params, buffers = stack_module_state(list(models))
        template = copy.deepcopy(models[0]).to("meta")
        self.template: nn.Module
        object.__setattr__(self, "template", template)  # not a submodule: its meta tensors are never state
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        for name, value in params.items():
            self.register_parameter(_slot(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_slot(name), value.detach().clone())
        self.state_keys = list(models[0].state_dict())

    # ------------------------------------------------------------------ the forward pass
    def stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: getattr(self, _slot(n)) for n in self.param_names}
        buffers = {n: getattr(self, _slot(n)) for n in self.buffer_names}
        return params, buffers

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        params, buffers = self.stacked()
        self.template.train(self.training)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (xx,))

        if self.mode == "loop":
            # unbind: one view per member, and in the backward one stack per parameter (indexing t[g] would
            # write a zero-filled (G, ...) gradient per member and add them: G times the memory traffic)
            p_each = {n: t.unbind(0) for n, t in params.items()}
            b_each = {n: t.unbind(0) for n, t in buffers.items()}
            xs = [x] * self.size if shared_input else x.unbind(0)
            return torch.stack([one({n: t[g] for n, t in p_each.items()}, {n: t[g] for n, t in b_each.items()},
                                    xs[g]) for g in range(self.size)])
        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="different")(params, buffers, x)

    # ------------------------------------------------------------------ members in and out
    def member_state(self, g: int) -> dict[str, torch.Tensor]:
        """Member g's ``state_dict`` in its own architecture's layout (copies, so later steps leave it alone)."""
        own = {n: getattr(self, _slot(n))[g].detach().clone() for n in self.param_names + self.buffer_names}
        return {k: own[k] for k in self.state_keys}

    def member_parameters(self, g: int) -> list[torch.Tensor]:
        """Member g's parameter slices, in its own ``parameters()`` order (views)."""
        return [getattr(self, _slot(n))[g] for n in self.param_names]

    def stacked_parameters(self) -> list[nn.Parameter]:
        """The (G, ...) parameters, in the members' ``parameters()`` order (what a packed optimizer steps)."""
        return [getattr(self, _slot(n)) for n in self.param_names]
