"""The Hessian of a data-set-averaged loss as a linear operator on flat parameter vectors.

``H = d^2 L / d theta^2`` with ``L(theta) = sum_b (n_b / N) * loss_fn(model(x_b; theta), y_b)``:
each batch's mean loss is weighted by its share of all ``N`` samples, so ``H`` is the Hessian of
the loss averaged over every sample, whatever the batch sizes. The loop over batches happens
inside the operator; callers only see ``H @ v``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ltsam.hessian.batchnorm import batchnorm_as_affine

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
Backend = Literal["double_backward", "forward_over_reverse"]

# The two backends cost about the same per vector, and the double backward is fastest once its gradient
# graph is kept between products (measured: docs/speed.md). Only the double backward can keep its graph
# between products, so it is the default.
DEFAULT_BACKEND: Backend = "double_backward"


def batch_size(targets: Tensor | Sequence) -> int:
    """Number of samples in a batch: the leading dimension of its targets."""
    return int(targets.shape[0]) if isinstance(targets, Tensor) else len(targets)


class HessianOperator:
    """``H = sum_b (n_b / N) * Hessian of loss_fn(model(x_b), y_b)`` w.r.t. ``params``.

    ``params`` defaults to every parameter of ``model`` with ``requires_grad``; vectors are those
    parameters flattened and concatenated in order (length ``dim``). ``matmat`` multiplies a
    ``[dim, k]`` block in one pass over the data: the ``k`` columns share each batch's forward
    and first backward pass.

    Backends: ``"double_backward"`` differentiates ``<grad L_b, v>`` again (reverse-over-reverse,
    several vectors at once through ``is_grads_batched``); ``"forward_over_reverse"`` is
    ``torch.func.jvp`` of ``torch.func.grad``, ``vmap``-ed over the vectors. With the double
    backward, the gradient graphs of the first batches holding up to ``cache_samples`` samples
    are built once and kept, so later products skip their forward and first backward pass (see
    docs/speed.md for what that saves); the price is their activations in memory (about 8 MB per 32x32 image
    for ResNet-32). ``affine_batchnorm`` evaluates eval-mode batch-norm as the affine map it is
    (same function, cheaper second derivatives). The model should be in eval mode; its state is
    not changed. ``passes`` and ``vectors`` count data passes and vectors multiplied.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                 params: Sequence[Tensor] | None = None, *, backend: Backend = DEFAULT_BACKEND,
                 cache_samples: int = 0, affine_batchnorm: bool = True):
        if backend not in ("double_backward", "forward_over_reverse"):
            raise ValueError(f"unknown backend {backend!r}")
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.params = list(params) if params is not None else [
            p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no parameters to differentiate")
        names = {id(p): n for n, p in model.named_parameters()}
        self._names = [names.get(id(p)) for p in self.params]
        if backend == "forward_over_reverse" and None in self._names:
            raise ValueError("forward_over_reverse needs params that are parameters of model")
        self.backend, self.affine_batchnorm = backend, affine_batchnorm
        self.cache_samples = cache_samples if backend == "double_backward" else 0
        self.dim = sum(p.numel() for p in self.params)
        self.shape = (self.dim, self.dim)
        self.num_samples = sum(batch_size(t) for _, t in batches)
        if self.num_samples == 0:
            raise ValueError("batches hold no samples")
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self._cache: list[tuple[tuple[Tensor, ...], float]] = []
        self._cache_complete = False
        self.passes = 0
        self.vectors = 0

    # -- public products -------------------------------------------------------------------
    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` of length ``dim``."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def matmat(self, V: Tensor) -> Tensor:
        """``H V`` for ``V`` of shape ``[dim, k]``, all ``k`` columns in one pass over the data."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ValueError(f"expected a [{self.dim}, k] block, got {tuple(V.shape)}")
        rows = V.t().to(device=self.device, dtype=self.dtype)
        tangents = self._split(rows)
        out = torch.zeros_like(rows)
        context = batchnorm_as_affine(self.model) if self.affine_batchnorm else nullcontext()
        # Attention (ViTs) through the math kernel: the fused ones have no second derivative.
        with context, sdpa_kernel([SDPBackend.MATH]):
            for products, weight in self._batch_products(tangents):
                out.add_(self._flatten(products), alpha=weight)
        self.passes += 1
        self.vectors += rows.shape[0]
        return out.t()

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def __call__(self, x: Tensor) -> Tensor:
        return self @ x

    def release(self) -> None:
        """Free the cached gradient graphs."""
        self._cache, self._cache_complete = [], False

    # -- internals -------------------------------------------------------------------------
    def _split(self, rows: Tensor) -> list[Tensor]:
        """``[k, dim]`` -> one ``[k, *p.shape]`` tensor per parameter (views, no copy)."""
        sizes = [p.numel() for p in self.params]
        return [chunk.reshape(rows.shape[0], *p.shape)
                for chunk, p in zip(rows.split(sizes, dim=1), self.params, strict=True)]

    @staticmethod
    def _flatten(per_param: Sequence[Tensor]) -> Tensor:
        k = per_param[0].shape[0]
        return torch.cat([t.reshape(k, -1) for t in per_param], dim=1)

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, float]:
        x, y = batch
        weight = batch_size(y) / self.num_samples
        if isinstance(x, Tensor):
            x = x.to(self.device, non_blocking=True)
        if isinstance(y, Tensor):
            y = y.to(self.device, non_blocking=True)
        return x, y, weight

    def _batch_products(self, tangents: list[Tensor]):
        """Yield ``(H_b V, n_b / N)`` per batch, ``H_b`` the Hessian of that batch's mean loss."""
        if self.backend == "forward_over_reverse":
            for batch in self.batches:
                x, y, weight = self._inputs(batch)
                yield self._forward_over_reverse(x, y, tangents), weight
            return
        for grads, weight in self._gradient_graphs():
            yield self._double_backward(grads, tangents), weight

    def _gradient_graphs(self):
        """``(gradient of the batch mean loss with its graph, n_b / N)`` per batch.

        The first batches, up to ``cache_samples`` samples in all, are built in the first pass
        and then served from the cache; the others are rebuilt every pass.
        """
        if self._cache_complete:
            yield from self._cache
        else:
            self._cache = []  # an interrupted first pass may have left a partial cache
        skip, room, caching = len(self._cache), self.cache_samples, not self._cache_complete
        for index, batch in enumerate(self.batches):
            if index < skip:
                continue
            x, y, weight = self._inputs(batch)
            with torch.enable_grad():
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True,
                                            allow_unused=True, materialize_grads=True)
            # Cache a prefix of the batches only, so that later passes know where to resume.
            caching = caching and batch_size(y) <= room
            if caching:
                self._cache.append((grads, weight))
                room -= batch_size(y)
            yield grads, weight
        self._cache_complete = True

    def _double_backward(self, grads: Sequence[Tensor], tangents: list[Tensor]) -> list[Tensor]:
        """``d<g, v>/d theta`` for every row ``v``; ``is_grads_batched`` vmaps the second backward."""
        batched = tangents[0].shape[0] > 1
        # A gradient without a graph is constant in theta: its rows of H are zero.
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        out = [torch.zeros_like(t) for t in tangents]
        if not live:
            return out
        hv = torch.autograd.grad([grads[i] for i in live], self.params,
                                 [tangents[i] if batched else tangents[i][0] for i in live],
                                 retain_graph=True, is_grads_batched=batched, allow_unused=True)
        for i, h in enumerate(hv):
            if h is not None:
                out[i] = h if batched else h.unsqueeze(0)
        return out

    def _forward_over_reverse(self, x: Tensor, y: Tensor, tangents: list[Tensor]) -> list[Tensor]:
        """``jvp(grad L_b, v)``, vmapped over the rows of ``V``; no autograd graph is kept."""
        names = self._names
        primals = {n: p.detach() for n, p in zip(names, self.params, strict=True)}

        def loss(ps: dict[str, Tensor]) -> Tensor:
            return self.loss_fn(functional_call(self.model, ps, (x,)), y)

        def hvp(*vs: Tensor) -> tuple[Tensor, ...]:
            tangent = dict(zip(names, vs, strict=True))
            out = jvp(grad(loss), (primals,), (tangent,))[1]
            return tuple(out[n] for n in names)

        # Outer no_grad: torch.func ignores it, and it stops plain autograd from also recording
        # the computation through the model's own requires_grad parameters.
        with torch.no_grad():
            if tangents[0].shape[0] == 1:
                return [h.unsqueeze(0) for h in hvp(*(t[0] for t in tangents))]
            return list(vmap(hvp)(*tangents))
