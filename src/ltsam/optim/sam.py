"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) with the davda54/sam calling convention.

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward(); optimizer.first_step(zero_grad=True)
    loss_fn(model(x), y).backward(); optimizer.second_step(zero_grad=True)

The step is lean: the ascent and the restore are fused multi-tensor (``torch._foreach_*``)
operations, the gradient norm is one fused reduction, and the weights are backed up into buffers
allocated once, so a step allocates no parameter copies. The restore is an exact copy, so the
update equals the textbook perturb / restore / step bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


class SAM(torch.optim.Optimizer):
    """SAM wrapper around any base optimizer; param groups may carry their own ``rho``/``adaptive``.

    Ascent: e(w) = rho * g / (||g||_2 + 1e-12); adaptive (ASAM): e(w) = rho * w^2 g / (||w g||_2 + 1e-12),
    the norm taken over all parameters with a gradient. With ``members=G`` (a pack of G runs, every parameter
    stacked to (G, ...)), each member's norm runs over its own slices and ``rho`` may be a (G,) tensor.
    ``second_step`` restores w and lets the base optimizer step with the gradient taken at w + e(w).
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False, members: int | None = None, **kwargs: Any):
        if rho < 0.0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        # One list of group dicts drives both optimizers, so lr/rho schedules reach the base step.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._backup: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed: list[torch.Tensor] = []
        # A pack (ltsam.pack): every parameter is (members, ...), and each member's norm and radius are its own.
        self.members = members

    def _grad_norm(self) -> torch.Tensor:
        """||g|| (or ||w g|| for adaptive groups) over all parameters, as one fused reduction."""
        norms: list[torch.Tensor] = []
        per_member: list[list[Sequence[torch.Tensor]]] = []  # [group][member][parameter]
        for group in self.param_groups:
            grads: list[torch.Tensor] | tuple[torch.Tensor, ...] = [p.grad for p in group["params"]
                                                                    if p.grad is not None]
            if not grads:
                continue
            if group["adaptive"]:
                params = [p for p in group["params"] if p.grad is not None]
                grads = torch._foreach_mul(grads, params)
            if self.members:  # each member's norms as its run alone takes them (the same bits)
                per_member.append([torch._foreach_norm([grad[g] for grad in grads]) for g in range(self.members)])
            else:
                norms.extend(torch._foreach_norm(grads))
        if self.members:
            if not per_member:
                return torch.zeros(self.members)
            rows = [[n for group in per_member for n in group[g]] for g in range(self.members)]
            return torch.stack([torch.linalg.vector_norm(torch.stack([n.to(row[0].device) for n in row]))
                                for row in rows])
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, skip_nonfinite: bool = False) -> None:
        """Move to w + e(w). The gradient buffers are reused for e(w), so they are consumed.

        e(w) is invariant to a common scale of the gradients, so loss-scaled (fp16) gradients need
        no unscaling; with ``skip_nonfinite`` an overflowed gradient leaves w unperturbed.
        """
        grad_norm = self._grad_norm()
        self._perturbed = []
        if skip_nonfinite and not bool(torch.isfinite(grad_norm)):
            if zero_grad:
                self.zero_grad()
            return
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            backups = []
            for p in params:
                buf = self._backup.get(p)
                if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                    buf = torch.empty_like(p, memory_format=torch.preserve_format)
                    self._backup[p] = buf
                backups.append(buf)
            torch._foreach_copy_(backups, params)
            if group["adaptive"]:
                torch._foreach_mul_(grads, params)
                torch._foreach_mul_(grads, params)
            if self.members:  # member g's slices move by its own rho_g / ||g_g||, computed as torch computes
                # ``float / tensor`` in its run alone (1 / t, then times rho): the same bits
                scale = (grad_norm + 1e-12).reciprocal() * group["rho"]
                for grad in grads:
                    grad.mul_(scale.to(grad.device, grad.dtype).view(-1, *([1] * (grad.dim() - 1))))
            else:
                scale = group["rho"] / (grad_norm + 1e-12)
                torch._foreach_mul_(grads, scale.to(grads[0].device))
            torch._foreach_add_(params, grads)
            self._perturbed.extend(params)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by ``first_step`` (exact copy, no arithmetic)."""
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, [self._backup[p] for p in self._perturbed])
            self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w exactly, then take the base optimizer's step with the perturbed gradient."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Full SAM step; ``closure`` must do a full forward-backward and return the loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that does a full forward-backward pass")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's complete state (momentum buffers included) and the shared groups."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
