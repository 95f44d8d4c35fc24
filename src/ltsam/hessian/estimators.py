"""Randomised spectral estimators for any symmetric linear operator ``A`` of size ``dim``.

The operator can be a :class:`~ltsam.hessian.operator.HessianOperator`, anything with a
``matmat([dim, k])`` method, a dense tensor, or a plain callable ``v -> A v``. The algorithm and
the matrix stay separate: every estimator is written as a *step generator* that yields a block of
vectors ``[dim, k]``, receives ``A`` times that block and finally returns its result.
:func:`run_fused` drives several such generators at once, so that all their pending vectors share
one pass over the data; the plain functions (:func:`power_iteration`, :func:`hutchinson_trace`,
:func:`lanczos`, :func:`slq`) drive one.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

R = TypeVar("R")
Steps = Generator[Tensor, Tensor, R]

# The reference's guard against division by zero in its relative-change tests.
_REL_EPS = 1e-6


@runtime_checkable
class MatMat(Protocol):
    def matmat(self, V: Tensor) -> Tensor: ...


Operator = MatMat | Tensor | Callable[[Tensor], Tensor]


@dataclass
class EigenResult:
    """Dominant eigenvalue (largest ``|lambda|``) estimate."""

    value: float
    iterations: int
    converged: bool
    source: str = "power_iteration"


@dataclass
class TraceResult:
    """Hutchinson trace estimate ``mean_i z_i^T A z_i`` (plus ``offset`` when deflated)."""

    value: float
    iterations: int
    converged: bool
    std_error: float
    samples: list[float] = field(default_factory=list, repr=False)
    offset: float = 0.0


@dataclass
class LanczosResult:
    """Tridiagonal ``T = Q^T A Q`` from ``m`` Lanczos steps, with its Ritz values and weights."""

    alphas: Tensor
    betas: Tensor
    nodes: Tensor
    weights: Tensor
    residuals: Tensor
    _: KW_ONLY
    basis: Tensor | None = field(default=None, repr=False)
    restarts: int = 0

    @property
    def extreme(self) -> tuple[float, float]:
        """Ritz value of largest magnitude and its residual bound ``|A y - theta y|``."""
        k = int(self.nodes.abs().argmax())
        return float(self.nodes[k]), float(self.residuals[k])


# -- applying an operator --------------------------------------------------------------------
def apply(op: Operator, V: Tensor) -> Tensor:
    """``A V`` for a block ``V`` of shape ``[dim, k]``, using ``op.matmat`` when there is one."""
    if isinstance(op, Tensor):
        return op @ V.to(op.dtype)
    if isinstance(op, MatMat):
        return op.matmat(V)
    return torch.stack([op(V[:, j]) for j in range(V.shape[1])], dim=1)


def operator_info(op: Operator, dim: int | None = None) -> tuple[int, torch.dtype, torch.device]:
    """``(dim, dtype, device)`` of the vectors an operator takes."""
    shape = getattr(op, "shape", None)
    if dim is None:
        if shape is None:
            raise ValueError("pass dim= for an operator without a shape")
        dim = int(shape[0])
    dtype = getattr(op, "dtype", torch.float32)
    device = getattr(op, "device", torch.device("cpu"))
    return dim, dtype, device


def run_fused(op: Operator, *steps: Steps[Any]) -> list[Any]:
    """Drive several step generators together; each round applies ``op`` once to all blocks.

    Returns the generators' results in order. A generator that finishes drops out; the others go
    on sharing passes.
    """
    results: list[Any] = [None] * len(steps)
    pending: dict[int, Tensor] = {}
    for i, gen in enumerate(steps):
        try:
            pending[i] = next(gen)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        ids = list(pending)
        product = apply(op, torch.cat([pending[i] for i in ids], dim=1))
        offset = 0
        for i in ids:
            k = pending[i].shape[1]
            try:
                pending[i] = steps[i].send(product[:, offset:offset + k])
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
            offset += k
    return results


# -- random vectors ----------------------------------------------------------------------------
def rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    """A vector of independent ``+-1`` entries, drawn on the CPU for reproducibility."""
    signs = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device)


def gaussian(dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu") -> Tensor:
    """A standard normal vector, drawn on the CPU for reproducibility."""
    return torch.randn(dim, generator=generator, dtype=dtype).to(device)


def _dot(a: Tensor, b: Tensor) -> float:
    # Accumulate in float64: these scalars steer the iterations.
    return float(torch.dot(a.double().reshape(-1), b.double().reshape(-1)))


def _relative_change(new: float, old: float) -> float:
    return abs(new - old) / (abs(old) + _REL_EPS)


# -- power iteration ---------------------------------------------------------------------------
def power_iteration_steps(dim: int, iters: int = 100, tol: float = 1e-3, seed: int = 0,
                          dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu") -> Steps[EigenResult]:
    """Power iteration for the eigenvalue of largest magnitude.

    ``v_0 ~ N(0, I) / ||.||``; ``lambda_k = v_k^T A v_k``, ``v_{k+1} = A v_k / ||A v_k||``; stop
    when ``|lambda_k - lambda_{k-1}| / (|lambda_{k-1}| + 1e-6) < tol`` (``tol=0``: all ``iters``).
    Returns the latest Rayleigh quotient.
    """
    g = torch.Generator().manual_seed(seed)
    v = gaussian(dim, g, dtype, device)
    v = v / v.norm()
    value, previous, converged, done = 0.0, None, False, 0
    while done < iters:
        done += 1
        hv = (yield v.reshape(-1, 1)).reshape(-1)
        value = _dot(v, hv)
        norm = hv.norm()
        if norm == 0:  # A v = 0: v is an eigenvector of eigenvalue 0, nothing left to iterate
            converged = True
            break
        v = hv / norm
        if previous is not None and _relative_change(value, previous) < tol:
            converged = True
            break
        previous = value
    return EigenResult(value, done, converged)


def power_iteration(op: Operator, iters: int = 100, tol: float = 1e-3, seed: int = 0,
                    dim: int | None = None) -> EigenResult:
    """Eigenvalue of largest magnitude of ``op`` by power iteration (see the step generator)."""
    dim, dtype, device = operator_info(op, dim)
    return run_fused(op, power_iteration_steps(dim, iters, tol, seed, dtype, device))[0]


# -- Hutchinson --------------------------------------------------------------------------------
def project_out(V: Tensor, basis: Tensor | None) -> Tensor:
    """``(I - Q Q^T) V`` for orthonormal rows ``Q`` (``basis``, shape ``[m, dim]``), twice over."""
    if basis is None:
        return V
    for _ in range(2):  # classical Gram-Schmidt, repeated: orthogonal to working precision
        V = V - basis.t() @ (basis @ V)
    return V


def hutchinson_steps(dim: int, iters: int = 100, tol: float = 1e-3, seed: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", *,
                     block: int = 1, basis: Tensor | None = None,
                     offset: float = 0.0) -> Steps[TraceResult]:
    """Hutchinson's estimator ``tr(A) ~ offset + mean_i z_i^T P A P z_i``, ``z_i`` Rademacher.

    Without ``basis``, ``P = I`` and ``offset = 0``: the plain estimator. With an orthonormal
    ``basis`` ``Q`` (rows) and ``offset = tr(Q A Q^T)`` (e.g. the sum of Lanczos alphas),
    ``P = I - Q^T Q`` removes the part of ``A`` the basis already captured, which lowers the
    variance and leaves the expectation ``tr(A)``. The stopping rule is the reference's, applied
    sample by sample: stop at the first ``i`` with
    ``|m_i - m_{i-1}| / (|m_{i-1}| + 1e-6) < tol`` where ``m_i`` is the running estimate and
    ``m_0 = 0``. ``block`` probes are multiplied per pass; probes past the stopping sample are
    discarded, so the result does not depend on ``block``.
    """
    g = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    estimate, previous, converged = offset, 0.0, False
    if basis is not None:
        basis = basis.to(device=device, dtype=dtype)
    while len(samples) < iters and not converged:
        k = min(block, iters - len(samples))
        Z = torch.stack([rademacher(dim, g, dtype, device) for _ in range(k)], dim=1)
        Z = project_out(Z, basis)
        AZ = yield Z
        values = (Z.double() * AZ.double()).sum(dim=0).tolist()
        for value in values:
            samples.append(value)
            estimate = offset + sum(samples) / len(samples)
            if _relative_change(estimate, previous) < tol:
                converged = True
                break
            previous = estimate
    n = len(samples)
    std_error = float(torch.tensor(samples).std() / n**0.5) if n > 1 else float("inf")
    return TraceResult(estimate, n, converged, std_error, samples, offset)


def hutchinson_trace(op: Operator, iters: int = 100, tol: float = 1e-3, seed: int = 0, *,
                     dim: int | None = None, block: int = 1, basis: Tensor | None = None,
                     offset: float = 0.0) -> TraceResult:
    """Hutchinson trace estimate of ``op`` (see :func:`hutchinson_steps`)."""
    dim, dtype, device = operator_info(op, dim)
    steps = hutchinson_steps(dim, iters, tol, seed, dtype, device, block=block, basis=basis, offset=offset)
    return run_fused(op, steps)[0]


# -- Lanczos and stochastic Lanczos quadrature -------------------------------------------------
def _orthonormalise(w: Tensor, basis: Tensor) -> Tensor | None:
    """``p / ||p||`` with ``p = (I - Q^T Q) w`` (rows ``Q``: ``basis``) by classical Gram-Schmidt
    done twice, or ``None`` when ``w`` lies in the span of ``Q`` to working precision.

    Kahan-Parlett "twice is enough": if the second pass keeps at least half of the norm left by
    the first, ``p`` is orthogonal to ``Q`` to working precision; if it removes more, the first
    pass had cancelled all but rounding errors and ``p`` is no new direction.
    """
    p1 = w - basis.t() @ (basis @ w)
    p2 = p1 - basis.t() @ (basis @ p1)
    n1, n2 = float(p1.double().norm()), float(p2.double().norm())
    if n2 == 0 or n2 < 0.5 * n1:
        return None
    return p2 / n2


def ritz(alphas: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition ``T = U diag(theta) U^T`` of the tridiagonal Lanczos matrix.

    ``alphas`` is the diagonal and ``betas`` the off-diagonal; returns ``(theta, U)`` from
    ``torch.linalg.eigh`` in float64, ``theta`` ascending. The quadrature weights are
    ``U[0, :]**2`` (summing to one).
    """
    T = torch.diag(alphas.double())
    if betas.numel():
        T = T + torch.diag(betas.double(), 1) + torch.diag(betas.double(), -1)
    return torch.linalg.eigh(T)


def lanczos_steps(dim: int, steps: int = 100, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu",
                  keep_basis: bool = False) -> Steps[LanczosResult]:
    """Lanczos tridiagonalisation from a Rademacher start, with full re-orthogonalisation.

    ``q_1 = z / ||z||``; ``w = A q_j - alpha_j q_j - beta_j q_{j-1}`` with
    ``alpha_j = q_j^T A q_j``; ``q_{j+1}`` is ``w`` orthogonalised against all previous ``q`` by
    classical Gram-Schmidt done twice (see :func:`_orthonormalise`) and normalised, and
    ``beta_{j+1} = q_{j+1}^T w`` (``= ||(I - Q^T Q) w||``, rows ``Q`` the basis so far). On
    breakdown (``w`` in the span of the basis to working precision: the Krylov space is
    invariant) a fresh Gaussian vector, orthogonalised the same way, continues the basis (counted
    in ``restarts``), and ``beta_{j+1} = q_{j+1}^T w`` is the rounding-sized coupling that is
    really there. So ``T = Q^T A Q`` up to rounding however many breakdowns there are, and
    ``steps`` (clamped to ``dim``) ``= dim`` yields all eigenvalues of ``A``, also in float32 on
    a Hessian with a large null space: on the two float32 networks of about 1,000 parameters in
    ``tests/test_hessian.py`` (440 and 850 zero eigenvalues) every Ritz value lies within
    ``5 eps ||A||`` of float64 ``eigvalsh`` of the dense Hessian, the accuracy of the float32
    product itself. ``residuals[k] = ||w_m|| |U[m, k]|`` bounds
    ``|A y_k - theta_k y_k|`` for the Ritz vector ``y_k``; ``|lambda - theta_k| <= residuals[k]``
    for some eigenvalue.
    """
    m = min(steps, dim)
    g = torch.Generator().manual_seed(seed)
    basis = torch.empty(m, dim, dtype=dtype, device=device)
    alphas, betas = [], []
    restarts = 0
    q: Tensor | None
    q = rademacher(dim, g, dtype, device)
    basis[0] = q / q.norm()
    w = torch.zeros(dim, dtype=dtype, device=device)
    for j in range(m):
        if j > 0:
            q = _orthonormalise(w, basis[:j])
            while q is None:  # a fresh direction; one draw suffices unless j is close to dim
                q = _orthonormalise(gaussian(dim, g, dtype, device), basis[:j])
                restarts += 1
            # beta is the entry q_{j+1}^T A q_j of Q^T A Q, also after a restart. Recording ||w||
            # instead, or restarting while w still held more than rounding (the former rule:
            # ||w|| below 100 eps ||T||), made T differ from Q^T A Q by that much, and full-length
            # float32 runs on Hessians with large null spaces then produced Ritz values far
            # outside the spectrum.
            beta = _dot(q, w)
            if beta < 0:
                q, beta = -q, -beta
            betas.append(beta)
            basis[j] = q
        aq = (yield basis[j].reshape(-1, 1)).reshape(-1)
        alpha = _dot(basis[j], aq)
        alphas.append(alpha)
        w = aq - alpha * basis[j]
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
    a = torch.tensor(alphas, dtype=torch.float64)
    b = torch.tensor(betas, dtype=torch.float64)
    nodes, U = ritz(a, b)
    residuals = float(w.double().norm()) * U[-1, :].abs()
    return LanczosResult(a, b, nodes, U[0, :] ** 2, residuals, basis=basis if keep_basis else None,
                         restarts=restarts)


def lanczos(op: Operator, steps: int = 100, seed: int = 0, dim: int | None = None,
            keep_basis: bool = False) -> LanczosResult:
    """One Lanczos run on ``op`` (see :func:`lanczos_steps`)."""
    dim, dtype, device = operator_info(op, dim)
    return run_fused(op, lanczos_steps(dim, steps, seed, dtype, device, keep_basis))[0]


def slq(op: Operator, steps: int = 100, runs: int = 1, seed: int = 0,
        dim: int | None = None, fused: bool = True) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature: ``runs`` independent Lanczos runs.

    The spectral density ``phi(t) = (1/dim) sum_i delta(t - lambda_i)`` is approximated by
    ``(1/runs) sum_r sum_k w_rk delta(t - theta_rk)``. Returns ``(nodes, weights)``, each of shape
    ``[runs, min(steps, dim)]``; run ``r`` uses seed ``seed + r``. ``fused`` multiplies the
    vectors of all runs in shared passes; otherwise the runs go one after the other.
    """
    dim, dtype, device = operator_info(op, dim)
    gens = [lanczos_steps(dim, steps, seed + r, dtype, device) for r in range(runs)]
    results = run_fused(op, *gens) if fused else [run_fused(op, g)[0] for g in gens]
    return (torch.stack([r.nodes for r in results]), torch.stack([r.weights for r in results]))
