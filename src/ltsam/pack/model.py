"""G models of one architecture as one module: their parameters and buffers stacked along a new first
dimension and the architecture applied to each member's slice through ``torch.func`` (``vmap`` of
``functional_call``, which turns convolutions into grouped ones, or ``functional_call`` on each member's slices),
keeping each member's batch-norm statistics its own. No second copy of any architecture exists: the members' own
module is the template (on the ``meta`` device: no storage).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ltsam.pack.threads import member_threads, thread_plan

MODES = ("vmap", "loop", "threads")
"""How the members run: ``vmap`` (one batched call per layer: grouped convolutions, batched matmuls; fast on
a GPU), ``loop`` (each member's slices through the architecture in turn: a CPU's grouped convolutions are
slower than separate ones) or ``threads`` (as ``loop``, the members side by side on worker threads, each
member's forward and backward pass on its own thread: ``ltsam.pack.threads``)."""


def _slot(name: str) -> str:
    """A stacked tensor's attribute name for the member's dotted name (``layer1.0.conv1.weight``)."""
    return name.replace(".", "__")


def _each_member(stacked: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Each member's slices of the stacked tensors (views). ``unbind``: one view per member, and in the backward
    one stack per tensor (indexing t[g] would write a zero-filled (G, ...) gradient per member and add them: G
    times the memory traffic)."""
    views = {n: t.unbind(0) for n, t in stacked.items()}
    return [{n: v[g] for n, v in views.items()} for g in range(size)]


class PackedModel(nn.Module):
    """``forward(x)`` with ``x`` of shape (G, B, ...) gives (G, B, classes): member g's model on ``x[g]``;
    ``shared_input=True`` reads one (B, ...) batch for every member (evaluation on one test set). ``mode``:
    one of :data:`MODES`.

    Parameters and buffers are (G, ...) tensors; member g's own ``state_dict`` is :meth:`member_state`.
    Gradients never mix members: the output of member g depends on slice g only. Threads mode's workers:
    ``ltsam.pack.threads.thread_plan(G, threads_each, workers)``.
    """

    def __init__(self, models: Sequence[nn.Module], mode: str = "vmap", workers: int | None = None,
                 threads_each: int | None = None):
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
        self.threads = member_threads(*thread_plan(self.size, threads_each, workers)) if mode == "threads" else None
        # one template per worker: functional_call swaps a module's tensors for the call's, so two threads
        # must never share one
        self.templates = [template] + [copy.deepcopy(template) for _ in range(
            (self.threads.workers if self.threads else 1) - 1)]

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

        if self.threads is not None and not torch.is_grad_enabled():
            return self._threaded_inference(params, buffers, x, shared_input)
        if self.mode != "vmap":  # loop, and threads with gradients (their graph must reach the stacked tensors)
            p_each, b_each = _each_member(params, self.size), _each_member(buffers, self.size)
            xs = [x] * self.size if shared_input else x.unbind(0)
            return torch.stack([one(p_each[g], b_each[g], xs[g]) for g in range(self.size)])
        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="different")(params, buffers, x)

    def _threaded_inference(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                            x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """The members' forward passes without gradients on the worker threads, under the caller's autocast
        (autocast and grad mode are per thread)."""
        assert self.threads is not None
        kind = x.device.type
        cast = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
        p_each, b_each = _each_member(params, self.size), _each_member(buffers, self.size)
        xs = [x] * self.size if shared_input else x.unbind(0)
        self._set_templates_mode()

        def member(g: int) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.no_grad(), torch.autocast(kind, dtype=cast[1], enabled=cast[0]):
                    return functional_call(self._template(g), (p_each[g], b_each[g]), (xs[g],))
            return run

        return torch.stack(self.threads.map([member(g) for g in range(self.size)]))

    def forward_backward(self, x: torch.Tensor, loss_of: Callable[[int, torch.Tensor], torch.Tensor],
                         autocast: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """Threads mode's training pass: on member g's worker thread, its forward on ``x[g]`` (in ``autocast()``),
        its loss ``loss_of(g, logits)`` and its backward pass into leaves of its own (views of its slices); then
        the members' gradients stacked into the (G, ...) parameters' ``.grad`` (added, as ``backward`` adds).
        Returns the G losses and the (G, B, classes) logits, detached."""
        assert self.threads is not None, "forward_backward is threads mode's"
        params, buffers = self.stacked()
        leaves = _each_member({n: t.detach() for n, t in params.items()}, self.size)
        b_each = _each_member(buffers, self.size)
        xs = x.unbind(0)
        self._set_templates_mode()

        def member(g: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor, Sequence[torch.Tensor | None]]]:
            def run() -> tuple[torch.Tensor, torch.Tensor, Sequence[torch.Tensor | None]]:
                own = {n: t.requires_grad_() for n, t in leaves[g].items()}
                with torch.enable_grad():
                    with autocast():
                        logits = functional_call(self._template(g), (own, b_each[g]), (xs[g],))
                        loss = loss_of(g, logits)
                    grads = torch.autograd.grad(loss, list(own.values()), allow_unused=True)
                return loss.detach(), logits.detach(), grads
            return run

        results = self.threads.map([member(g) for g in range(self.size)])
        with torch.no_grad():
            for i, t in enumerate(params.values()):
                each = [r[2][i] for r in results]
                if all(e is None for e in each):  # no member's graph reaches it: its .grad stays as it is
                    continue
                grad = torch.stack([torch.zeros_like(t[g]) if e is None else e for g, e in enumerate(each)])
                if t.grad is None:
                    t.grad = grad
                else:
                    t.grad.add_(grad)
        return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])

    def _template(self, g: int) -> nn.Module:
        """Member g's worker's template (the one template outside threads mode)."""
        return self.templates[g % len(self.templates)]

    def _set_templates_mode(self) -> None:
        for t in self.templates:
            t.train(self.training)

    # ------------------------------------------------------------------ members in and out
    def member_state(self, g: int) -> dict[str, torch.Tensor]:
        """Member g's ``state_dict`` in its own architecture's layout (copies, so later steps leave it alone)."""
        own = {n: getattr(self, _slot(n))[g].detach().clone() for n in self.param_names + self.buffer_names}
        return {k: own[k] for k in self.state_keys}

    def stacked_parameters(self) -> list[nn.Parameter]:
        """The (G, ...) parameters, in the members' ``parameters()`` order (what a packed optimizer steps)."""
        return [getattr(self, _slot(n)) for n in self.param_names]
