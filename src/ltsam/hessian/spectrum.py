"""One-call spectral quantities of the Hessian of a model's loss over a set of batches.

Each function builds a :class:`HessianOperator` for ``H = sum_b (n_b/N) Hessian(loss_b)``
(w.r.t. every parameter with ``requires_grad``) and runs one estimator on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from ltsam.hessian.estimators import EigenResult, TraceResult, hutchinson_trace, power_iteration, slq
from ltsam.hessian.operator import Batch, HessianOperator, LossFn

# Gradient graphs kept between products: about 2 GB for ResNet-32 on 32x32 images, and less time per
# product (see HessianOperator; measured: docs/speed.md).
DEFAULT_CACHE_SAMPLES = 256


def _operator(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> HessianOperator:
    return HessianOperator(model, loss_fn, batches, cache_samples=DEFAULT_CACHE_SAMPLES)


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], iters: int = 100,
                   tol: float = 1e-3, seed: int = 0) -> EigenResult:
    """Eigenvalue of ``H`` of largest magnitude by power iteration from a Gaussian start.

    Stops when ``|l_k - l_{k-1}| / (|l_{k-1}| + 1e-6) < tol`` (``tol=0``: all ``iters``).
    """
    return power_iteration(_operator(model, loss_fn, batches), iters, tol, seed)


def trace(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], iters: int = 100,
          tol: float = 1e-3, seed: int = 0) -> TraceResult:
    """``tr(H) ~ mean_i z_i^T H z_i`` with Rademacher ``z_i`` (Hutchinson).

    Stops when the running mean changes by less than ``tol`` relative (``tol=0``: all ``iters``).
    """
    return hutchinson_trace(_operator(model, loss_fn, batches), iters, tol, seed)


def spectral_density(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], steps: int = 100,
                     runs: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature of ``H``: ``(nodes, weights)``, each ``[runs, steps]``.

    Nodes are the Ritz values of ``steps`` Lanczos steps (clamped to the dimension) from a
    Rademacher start; weights the squared first components of the eigenvectors of ``T``, summing
    to one per run.
    """
    # Runs one after the other: with cached gradient graphs that is cheapest on a CPU.
    return slq(_operator(model, loss_fn, batches), steps, runs, seed, fused=False)
