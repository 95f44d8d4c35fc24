"""The optimizer step of a pack, and its state moved between the pack and its members.

A pack's parameters are stacked (G, ...) tensors. SGD with momentum and weight decay is elementwise, so one
optimizer over the stacked tensors updates every member as its own would; SAM and ASAM take each member's
gradient norm over its own slices and its own radius (``SAM(members=G)``). A member's optimizer state is
written in the layout a run trained alone has, so its folder resumes alone, and packs are stacked back from
such states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ltsam.optim import Step, StepSettings, build_step
from ltsam.optim.sam import SAM
from ltsam.pack.compat import step_name

if TYPE_CHECKING:
    from ltsam.config import TrainConfig


def packed_step(cfg: TrainConfig, params: Iterable[torch.nn.Parameter], members: int,
                autocast: Callable) -> Step:
    """The configured step over the pack's stacked parameters (``cfg``: any member's configuration; what a
    step depends on is shared by the pack)."""
    step = build_step(step_name(cfg), params, StepSettings.of(cfg, autocast=autocast), config=cfg)
    if isinstance(step.optimizer, SAM):
        step.optimizer.members = members
    return step


def member_optimizer_state(state: dict[str, Any], g: int, members: int, rho: float | None) -> dict[str, Any]:
    """Member g's optimizer ``state_dict`` from the pack's: every per-parameter tensor sliced at g, SAM's radius
    the member's own (``rho``)."""
    per_param = {i: {k: _slice(v, g, members) for k, v in entry.items()} for i, entry in state["state"].items()}
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if "rho" in group:
            group["rho"] = float(rho if rho is not None else _slice(group["rho"], g, members))
        groups.append(group)
    return {"state": per_param, "param_groups": groups}


def stacked_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The pack's optimizer ``state_dict`` from its members' (saved in their checkpoints), stacked in order."""
    first = states[0]
    per_param: dict[Any, dict[str, Any]] = {}
    for i, entry in first["state"].items():
        per_param[i] = {k: (torch.stack([s["state"][i][k] for s in states]) if isinstance(v, torch.Tensor) else v)
                        for k, v in entry.items()}
    return {"state": per_param, "param_groups": [dict(g) for g in first["param_groups"]]}


def _slice(value: Any, g: int, members: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == members:
        return value[g].detach().clone()
    return value
