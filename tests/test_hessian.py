"""Hessian toolkit against dense Hessians formed with torch.func.hessian on tiny networks."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import ltsam.hessian.analysis as analysis
from ltsam.hessian import (
    HessianOperator,
    analyze_classes,
    compare_runs,
    density_grid,
    hutchinson_trace,
    lanczos,
    power_iteration,
    run_fused,
    slq,
    spectral_density,
    top_eigenvalue,
    trace,
)
from ltsam.hessian.batchnorm import batchnorm_as_affine
from ltsam.hessian.estimators import hutchinson_steps, lanczos_steps, rademacher
from tests.tolerances import rtol

DT = torch.float64
NUM_CLASSES = 3
BATCH_SIZES = (5, 3, 4)  # unequal on purpose: batch means must be weighted by n_b / N
# The operator's products against the dense Hessian (or against each other) are the same derivatives summed in
# other orders. Longest sum: H @ v over the <= 49 parameters (the batch and layer sums are shorter); stages:
# forward, backward and the product's two passes through <= 3 layers, and the product with H.
PRODUCT_RTOL = rtol(DT, n=49, stages=13)
# A complete (full-length) Lanczos run against eigvalsh of the dense Hessian, relative to max |eigenvalue|. Each
# entry of T = Q^T H Q carries the product's rounding (13 stages), the two Gram-Schmidt passes' projections and
# subtractions (4) and the dense eigensolver's (1): 18 stages of sums of <= 49 terms. An m x m perturbation's
# spectral norm (and trace) is at most m times its largest entry, m <= 49 steps, and an eigenvalue moves by at
# most that norm (Weyl): stages 49 * 18. The same bound covers the deflated trace (sum of the diagonal of T).
LANCZOS_FULL_RTOL = rtol(DT, n=49, stages=49 * 18)


def power_iteration_tolerance(eig: torch.Tensor, tol: float, rounding: float) -> float:
    """How far power iteration's Rayleigh quotient may be from the dominant eigenvalue once it stopped.

    Not a rounding bound: the iteration stops early. lambda_k = sum_i w_i lambda_i with w_i ~ c_i^2 lambda_i^(2k),
    so the error e_k = |lambda_1 - lambda_k| shrinks by q = (lambda_2 / lambda_1)^2 a step (to first order in the
    non-dominant weights; their normalisation adds a factor D_{k-1}/D_k <= 2 once lambda_1 carries half the
    weight, the margin 2 below): e_k <= q e_{k-1}, so the last change d_k = e_{k-1} - e_k >= e_k (1 - q) / q and
    e_k <= d_k q / (1 - q) < tol (|lambda_1| + 1e-6) q / (1 - q), the stopping rule bounding d_k. Plus the
    products' rounding (``rounding``, relative to |lambda_1|). A wrong sign or a factor of two fails it.
    """
    mags = eig.abs().sort(descending=True).values
    top, q = float(mags[0]), float(mags[1] / mags[0]) ** 2
    return 2 * tol * (top + 1e-6) * q / (1 - q) + rounding * top


def mlp() -> nn.Module:
    """Linear-tanh-Linear, 31 parameters."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, NUM_CLASSES)).to(DT).eval()


def conv_bn() -> nn.Module:
    """conv(1->2, 3x3) - batch-norm (eval, non-trivial statistics) - tanh - linear: 49 params."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(8, NUM_CLASSES)).to(DT)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


MODELS = {"mlp": (mlp, (3,)), "conv_bn": (conv_bn, (1, 4, 4))}


def data(shape: tuple[int, ...], n: int = sum(BATCH_SIZES), seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=DT)
    y = torch.arange(n) % NUM_CLASSES
    return x, y


def batches_of(x, y, sizes=BATCH_SIZES):
    return list(zip(x.split(list(sizes)), y.split(list(sizes)), strict=True))


def dense_hessian(model: nn.Module, x, y) -> torch.Tensor:
    """Hessian of the mean loss over all samples at once, w.r.t. the flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return hessian(loss)(flat)


@pytest.fixture(params=list(MODELS), scope="module")
def problem(request):
    build, shape = MODELS[request.param]
    model = build()
    x, y = data(shape)
    return model, x, y, batches_of(x, y), dense_hessian(model, x, y)


LOSS = nn.CrossEntropyLoss()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- the operator ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,cache", [("double_backward", 0), ("double_backward", 8),
                                           ("double_backward", 100), ("forward_over_reverse", 0)])
def test_product_matches_dense_hessian(problem, backend, cache):
    model, _, _, batches, H = problem
    op = HessianOperator(model, LOSS, batches, backend=backend, cache_samples=cache)
    assert op.shape == H.shape
    V = torch.randn(op.dim, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the second pass runs from the cached graphs where there are some
        assert rel(op.matvec(V[:, 0]), H @ V[:, 0]) < PRODUCT_RTOL
        assert rel(op.matmat(V), H @ V) < PRODUCT_RTOL
    assert op.passes == 4 and op.vectors == 8


def test_only_the_cached_batches_skip_their_forward_pass(problem):
    model, _, _, batches, H = problem
    forwards = []
    hook = model.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
    try:
        op = HessianOperator(model, LOSS, batches, cache_samples=8)  # room for the 5 and the 3
        v = torch.randn(op.dim, dtype=DT)
        op.matvec(v)
        assert forwards == [5, 3, 4]
        forwards.clear()
        assert rel(op.matvec(v), H @ v) < PRODUCT_RTOL
        assert forwards == [4]
        op.release()
        forwards.clear()
        op.matvec(v)
        assert forwards == [5, 3, 4]
    finally:
        hook.remove()


def test_matmat_equals_stacked_matvecs(problem):
    model, _, _, batches, _ = problem
    for backend in ("double_backward", "forward_over_reverse"):
        op = HessianOperator(model, LOSS, batches, backend=backend)
        V = torch.randn(op.dim, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
        stacked = torch.stack([op.matvec(V[:, j]) for j in range(4)], dim=1)
        # Batched and one-by-one products may take other kernels; entries near zero: atol at the entries' scale.
        tol = dict(rtol=PRODUCT_RTOL, atol=PRODUCT_RTOL * float(stacked.abs().max()))
        torch.testing.assert_close(op.matmat(V), stacked, **tol)
        torch.testing.assert_close(op @ V, stacked, **tol)


def test_per_class_hessians_sum_to_whole_data_hessian(problem):
    model, x, y, batches, H = problem
    total = torch.zeros_like(H)
    for c in range(NUM_CLASSES):
        xc, yc = x[y == c], y[y == c]
        total += len(yc) / len(y) * dense_hessian(model, xc, yc)
        op = HessianOperator(model, LOSS, [(xc, yc)])
        v = torch.randn(op.dim, dtype=DT)
        assert rel(op.matvec(v), dense_hessian(model, xc, yc) @ v) < PRODUCT_RTOL
    torch.testing.assert_close(total, H, rtol=PRODUCT_RTOL, atol=PRODUCT_RTOL * float(H.abs().max()))
    whole = HessianOperator(model, LOSS, batches)
    v = torch.randn(whole.dim, dtype=DT)
    parts = sum(
        int((y == c).sum()) / len(y) * HessianOperator(model, LOSS, [(x[y == c], y[y == c])]).matvec(v)
        for c in range(NUM_CLASSES))
    assert rel(parts, whole.matvec(v)) < PRODUCT_RTOL


def test_resnet32_product_matches_plain_double_backward():
    """The full ResNet-32 (464k parameters, option-A shortcuts, affine batch-norm), in float64.

    The point is the algebra: both backends equal autograd's plain double backward. In float32 the products
    take other kernels' summation orders (the affine batch-norm, vmap, jvp) and this network amplifies their
    rounding: the two float32 results differed by 1.2e-4 (each ~2.5e-4 from the float64 value), and the
    worst-case float32 bound below would be 1.6e-2. In float64 it is 2.9e-11 (measured ~1e-15).
    Small 16x16 inputs keep it fast; the layers and parameters are those of the 32x32 network.
    """
    from ltsam.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet32", 10)
    with torch.no_grad():  # non-trivial eval statistics, so the affine batch-norm is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model = model.to(DT).eval()
    batch, side = 4, 16
    x, y = torch.randn(batch, 3, side, side, dtype=DT), torch.randint(0, 10, (batch,))
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    grads = torch.autograd.grad(LOSS(model(x), y), params, create_graph=True)
    expected = torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads, params, v)])
    flat_v = torch.cat([t.reshape(-1) for t in v])
    # Longest sum: a first-stage convolution's weight gradient, over every image and pixel. Stages: forward,
    # backward and the product's two passes, each through 31 convolutions and the linear head.
    bound = rtol(DT, n=batch * side * side, stages=4 * 32)
    for backend in ("double_backward", "forward_over_reverse"):
        got = HessianOperator(model, LOSS, [(x, y)], backend=backend).matvec(flat_v)
        assert rel(got, expected) < bound, backend


def test_affine_batchnorm_is_the_eval_batchnorm_and_is_restored():
    model = conv_bn()
    x = torch.randn(6, 1, 4, 4, dtype=DT)
    expected = model(x)
    with batchnorm_as_affine(model) as replaced:
        assert replaced == 1 and "forward" in vars(model[1])
        # x * s + t against (x - mean) / sqrt(var + eps) * w + b: a few other roundings, then the same tanh and
        # 8-term linear head; its terms |W_jk tanh(.)| + |b_j| are at most the scale below.
        bound = rtol(DT, n=9, stages=8)
        head = model[-1]
        scale = float((head.weight.abs().sum(dim=1) + head.bias.abs()).max())
        torch.testing.assert_close(model(x), expected, rtol=bound, atol=bound * scale)
    assert "forward" not in vars(model[1])
    model.train()
    with batchnorm_as_affine(model) as replaced:  # training mode couples samples: untouched
        assert replaced == 0


# -- estimators on the model Hessian -----------------------------------------------------------
def test_top_eigenvalue_matches_dense(problem):
    model, _, _, batches, H = problem
    eig = torch.linalg.eigvalsh(H)
    top = float(eig[eig.abs().argmax()])
    result = top_eigenvalue(model, LOSS, batches, iters=2000, tol=1e-10)
    assert result.converged
    assert abs(result.value - top) <= power_iteration_tolerance(eig, 1e-10, PRODUCT_RTOL)
    assert top_eigenvalue(model, LOSS, batches, iters=7, tol=0).iterations == 7


def test_slq_with_full_steps_recovers_the_spectrum(problem):
    model, _, _, batches, H = problem
    eig = torch.linalg.eigvalsh(H)
    nodes, weights = spectral_density(model, LOSS, batches, steps=H.shape[0] + 5, runs=2)
    assert nodes.shape == weights.shape == (2, H.shape[0])  # steps clamped to the dimension
    scale = float(eig.abs().max())
    for r in range(2):
        assert (nodes[r] - eig).abs().max() < LANCZOS_FULL_RTOL * scale
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, dtype=weights.dtype))


def test_hutchinson_within_four_standard_errors(problem):
    model, _, _, batches, H = problem
    result = trace(model, LOSS, batches, iters=300, tol=0)
    assert result.iterations == 300 and not result.converged
    assert abs(result.value - float(H.trace())) < 4 * result.std_error


# -- estimators on dense matrices ----------------------------------------------------------------
def spd_matrix(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=DT,
                                       generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=DT)) @ q.T


def test_lanczos_continues_past_an_invariant_krylov_space():
    # Two distinct eigenvalues: the Krylov space of any start is 2-dimensional, so the residual
    # is rounding-sized at steps 2, 4, ... and the basis has to continue in new directions.
    A = spd_matrix([2.0] * 4 + [-1.0] * 3)
    result = lanczos(A, steps=50, seed=0)
    torch.testing.assert_close(result.nodes, torch.tensor([-1.0] * 3 + [2.0] * 4, dtype=DT))
    tiny = 7 * torch.finfo(DT).eps * 2.0  # n eps ||A||
    assert float(result.betas[1]) < tiny and float(result.betas[3]) < tiny
    # The weights are those of the start vector: on each eigenvalue, its squared projection onto
    # that eigenspace (the new directions carry none of it).
    q1 = rademacher(7, torch.Generator().manual_seed(0), DT)
    q1 = q1 / q1.norm()
    values, vectors = torch.linalg.eigh(A)
    top = vectors[:, values > 0.5]
    on_two = float((top.T @ q1).square().sum())
    # Both sides: squared components of 7-vectors orthonormal up to rounding (an eigensolver's, 7 terms a sum)
    # and a sum of them; two eigensolvers, the projection and the sums: 4 stages of 7 terms, relative to 1.
    weights_tol = rtol(DT, n=7, stages=4)
    assert float(result.weights[result.nodes > 0.5].sum()) == pytest.approx(on_two, rel=0, abs=weights_tol)
    assert abs(float(result.weights.sum()) - 1) < weights_tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lanczos_restarts_when_the_residual_vanishes(dtype):
    # A = 0: every residual is exactly zero, each step needs a fresh vector, and T = 0.
    n = 6
    result = lanczos(torch.zeros(n, n, dtype=dtype), steps=n, keep_basis=True)
    assert result.restarts == n - 1
    assert result.betas.abs().max() == 0 and result.nodes.abs().max() == 0
    Q = result.basis.double()
    tol = 10 * n * torch.finfo(dtype).eps
    assert (Q @ Q.T - torch.eye(n, dtype=torch.float64)).abs().max() < tol
    torch.testing.assert_close(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def null_space_problem(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float32 model of about 1,000 parameters and 20 samples whose Hessian is mostly null.

    ``tanh_mlp`` (40-20-10, 1,030 parameters, indefinite): first-layer weights along the 20
    input directions no sample spans have no curvature (at least 20 x 20 zero eigenvalues); the
    head is scaled up so the softmax is confident and dozens of eigenvalues are tiny but nonzero,
    the hard case for deciding when the Krylov space is used up. ``softmax_regression``
    (101 -> 10, 1,020 parameters, positive semi-definite): rank at most 20 x 9, so at least 840
    eigenvalues are exactly zero and a Ritz value below zero is an error.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "tanh_mlp":
        model, d = nn.Sequential(nn.Linear(40, 20), nn.Tanh(), nn.Linear(20, 10)), 40
    else:
        model, d = nn.Sequential(nn.Linear(101, 10)), 101
    with torch.no_grad():
        model[-1].weight.mul_(10.0)
    x = torch.randn(20, d, generator=g)
    return model.eval(), x, torch.arange(20) % 10


@pytest.mark.parametrize("name,zeros", [("tanh_mlp", 400), ("softmax_regression", 840)])
def test_full_length_float32_lanczos_recovers_every_eigenvalue_despite_a_large_null_space(name, zeros):
    model, x, y = null_space_problem(name)
    eig = torch.linalg.eigvalsh(dense_hessian(copy.deepcopy(model).double(), x.double(), y))
    dim, norm = eig.numel(), float(eig.abs().max())
    # The float32 product rounds a sum over the parameters: error ~ sqrt(dim) eps32 ||H||
    # (probabilistic bound); the float64 reference is good to dim eps64 ||H||.
    tol = (dim**0.5 * torch.finfo(torch.float32).eps + dim * torch.finfo(DT).eps) * norm
    assert int((eig.abs() <= tol).sum()) >= zeros
    op = HessianOperator(model, LOSS, [(x, y)], cache_samples=len(y))
    assert op.dtype == torch.float32 and op.dim == dim
    nodes = lanczos(op, steps=dim, seed=0).nodes
    assert nodes.numel() == dim
    assert float(nodes.min()) >= float(eig[0]) - tol and float(nodes.max()) <= float(eig[-1]) + tol
    assert abs(float(nodes[0] - eig[0])) <= tol and abs(float(nodes[-1] - eig[-1])) <= tol
    assert float((nodes - eig).abs().max()) <= tol  # every eigenvalue, in order


def test_slq_weights_are_the_squared_overlaps_with_the_start_vector():
    # Diagonal A: the eigenvectors are the unit vectors and a Rademacher start has entries
    # +-1/sqrt(n), so with n steps every weight is 1/n.
    n = 12
    A = torch.diag(torch.linspace(-2.0, 9.0, n, dtype=DT))
    nodes, weights = slq(A, steps=n, runs=2)
    torch.testing.assert_close(nodes[0], torch.linspace(-2.0, 9.0, n, dtype=DT))
    torch.testing.assert_close(weights, torch.full((2, n), 1 / n, dtype=DT))
    # Gauss quadrature moments: sum w theta^k = q1^T A^k q1 = (T^k)_11, for k = 1, 2.
    r = lanczos(spd_matrix(torch.linspace(-1, 3, 20).tolist()), steps=6)
    assert float((r.weights * r.nodes).sum()) == pytest.approx(float(r.alphas[0]))
    assert float((r.weights * r.nodes**2).sum()) == pytest.approx(
        float(r.alphas[0] ** 2 + r.betas[0] ** 2))


def test_stopping_rules_stop_at_the_first_small_relative_change():
    A = spd_matrix([4.0, 1.0, 0.5, -0.3, 0.2] + [0.1] * 20, seed=4)
    result = hutchinson_trace(A, iters=100, tol=0.05, seed=1)
    means = [sum(result.samples[:i]) / i for i in range(1, result.iterations + 1)]
    changes = [abs(m - p) / (abs(p) + 1e-6) for m, p in zip(means, [0.0] + means[:-1])]
    assert result.converged and result.iterations < 100
    assert changes[-1] < 0.05 and all(c >= 0.05 for c in changes[:-1])
    power = power_iteration(A, iters=100, tol=1e-3)
    assert power.converged and power.iterations < 100
    # rounding: A v and v^T (A v), two sums of 25 terms
    eig = torch.linalg.eigvalsh(A)
    assert abs(power.value - 4.0) < power_iteration_tolerance(eig, 1e-3, rtol(DT, n=25, stages=2))


def test_power_iteration_finds_negative_dominant_eigenvalue():
    A = spd_matrix([-5.0, 3.0, 1.0, 0.5, 0.1])
    result = power_iteration(A, iters=500, tol=1e-12)
    # rounding: A = Q diag Q^T (3 stages of 5 terms) and the products A v, v^T (A v) (2)
    bound = power_iteration_tolerance(torch.linalg.eigvalsh(A), 1e-12, rtol(DT, n=5, stages=5))
    assert result.converged and abs(result.value + 5.0) < bound


def test_lanczos_extreme_ritz_value_and_residual_bound():
    eig = [10.0, 4.0] + torch.linspace(-1, 1, 60).tolist()
    A = spd_matrix(eig, seed=1)
    result = lanczos(A, steps=15)
    value, residual = result.extreme
    assert abs(value - 10.0) <= residual + 1e-9 and abs(value - 10.0) < 1e-6


def test_hutchinson_result_does_not_depend_on_block_size():
    A = spd_matrix(torch.linspace(-2, 5, 30).tolist())
    one = hutchinson_trace(A, iters=50, tol=1e-2, seed=4, block=1)
    seven = hutchinson_trace(A, iters=50, tol=1e-2, seed=4, block=7)
    # Same probes, same stopping sample; only the rounding of A @ Z differs with the block width. A sample
    # z^T A z (|z_i| = 1) sums the n x n terms z_i A_ij z_j in two stages (A @ z, then the dot product).
    assert one.iterations == seven.iterations
    assert one.samples == pytest.approx(seven.samples, rel=0, abs=rtol(DT, n=30, stages=2) * float(A.abs().sum()))


def test_deflated_hutchinson_is_exact_with_a_complete_basis_and_unbiased_with_a_partial_one():
    A = spd_matrix([50.0, 20.0] + torch.linspace(-1, 1, 40).tolist(), seed=2)
    full = lanczos(A, steps=42, keep_basis=True)
    exact = hutchinson_trace(A, iters=10, tol=0, basis=full.basis, offset=float(full.alphas.sum()))
    # rounding only, as LANCZOS_FULL_RTOL for 42 steps of sums of 42 terms, relative to ||A|| = 50
    assert abs(exact.value - float(A.trace())) < rtol(DT, n=42, stages=42 * 18) * 50.0
    part = lanczos(A, steps=5, keep_basis=True)
    deflated = hutchinson_trace(A, iters=200, tol=0, basis=part.basis,
                                offset=float(part.alphas.sum()))
    plain = hutchinson_trace(A, iters=200, tol=0)
    assert abs(deflated.value - float(A.trace())) < 4 * deflated.std_error
    assert deflated.std_error < plain.std_error / 3  # the two outliers carried the variance


def test_run_fused_shares_passes_and_matches_separate_runs():
    A = spd_matrix(torch.linspace(-3, 7, 25).tolist(), seed=3)
    calls = []

    class Counting:
        shape = A.shape
        dtype = A.dtype
        device = A.device

        def matmat(self, V):
            calls.append(V.shape[1])
            return A @ V

    fused = run_fused(Counting(), lanczos_steps(25, 10, seed=1, dtype=DT),
                      hutchinson_steps(25, iters=4, tol=0, seed=2, dtype=DT))
    assert calls == [2] * 4 + [1] * 6
    torch.testing.assert_close(fused[0].nodes, lanczos(A, steps=10, seed=1).nodes)
    assert fused[1].samples == pytest.approx(  # z^T A z, as in test_hutchinson_result_does_not_depend_on_block_size
        hutchinson_trace(A, iters=4, tol=0, seed=2).samples, rel=0, abs=rtol(DT, n=25, stages=2) * float(A.abs().sum()))
    nodes, weights = slq(A, steps=8, runs=3, seed=5)
    torch.testing.assert_close(nodes[2], lanczos(A, steps=8, seed=7).nodes)
    one_by_one = slq(A, steps=8, runs=3, seed=5, fused=False)
    torch.testing.assert_close(one_by_one[0], nodes)
    torch.testing.assert_close(one_by_one[1], weights)


# -- density -----------------------------------------------------------------------------------------
def test_density_grid_integrates_to_one_and_peaks_at_the_node():
    grid, density = density_grid(torch.tensor([[0.3]], dtype=DT), torch.tensor([[1.0]]))
    assert grid.shape == density.shape == (10000,)
    step = float(grid[1] - grid[0])
    # the normalising sum of density_grid, summed again here: 10000 terms, plus the division and the step
    assert abs(float(density.sum()) * step - 1) < rtol(DT, n=10000, stages=2)
    # the trapezoid rule is that sum times step less half the two end points' weight: a closed form, to rounding
    ends_weight = step * float(density[0] + density[-1]) / 2
    assert abs(float(torch.trapezoid(density, grid)) - (1 - ends_weight)) < rtol(DT, n=10000, stages=3)
    assert abs(float(grid[density.argmax()]) - 0.3) <= step
    ends = rtol(DT, stages=3)  # 0.3 -+ 0.01 and linspace's end point against the literals: a few roundings, < 1
    assert abs(float(grid[0]) - 0.29) < ends and abs(float(grid[-1]) - 0.31) < ends


def test_density_grid_equals_the_formula_point_by_point():
    g = torch.Generator().manual_seed(0)
    nodes = torch.sort(torch.randn(2, 6, generator=g, dtype=DT) * 3, dim=1).values
    weights = torch.rand(2, 6, generator=g, dtype=DT)
    weights = weights / weights.sum(dim=1, keepdim=True)
    grid, density = density_grid(nodes, weights, num_points=200)
    low = float(nodes.min(dim=1).values.mean()) - 0.01
    high = float(nodes.max(dim=1).values.mean()) + 0.01
    var = 1e-5 * max(1.0, high - low)
    expected = []
    for x in torch.linspace(low, high, 200, dtype=DT).tolist():
        value = 0.0
        for r in range(2):
            for k in range(6):
                d = x - float(nodes[r, k])
                value += float(weights[r, k]) * math.exp(-d * d / (2 * var))
        expected.append(value / math.sqrt(2 * math.pi * var) / 2)
    expected = torch.tensor(expected, dtype=DT)
    expected = expected / (expected.sum() * (high - low) / 199)
    # Other orders and another exp (torch's vs. libm's): the normalising sum has 200 terms. exp(-a) turns the
    # rounding of its argument a (< 40 wherever the density exceeds atol) into a relative error of a * eps: 40
    # stages; below atol (at most the bound times the peak) the values are 0 to float64's precision.
    bound = rtol(DT, n=200, stages=40)
    torch.testing.assert_close(density, expected, rtol=bound, atol=bound * float(expected.max()))


# -- per-class analysis --------------------------------------------------------------------------
def analysis_inputs():
    model = conv_bn()
    x, y = data((1, 4, 4), n=18, seed=5)
    return model, x, y


FAST = dict(batch_size=4, power_iters=200, power_tol=1e-6, trace_iters=20, trace_tol=0,
            slq_steps=49, progress=False)


def test_analyze_classes_values_files_and_resume(tmp_path, monkeypatch):
    model, x, y = analysis_inputs()
    summary = analyze_classes(model, LOSS, x, y, classes=[0, 1], out_dir=tmp_path, **FAST, class_sizes=[9, 6, 3])
    entries = summary["entries"]
    assert list(entries) == ["0", "1", "all"]
    for key, mask in (("0", y == 0), ("all", slice(None))):
        H = dense_hessian(model, x[mask], y[mask])
        eig = torch.linalg.eigvalsh(H)
        e = entries[key]
        assert e["count"] == len(y[mask]) and e["lambda_dominant_source"] == "lanczos"
        assert abs(e["lambda_dominant"] - float(eig[eig.abs().argmax()])) < LANCZOS_FULL_RTOL * float(eig.abs().max())
        assert not any(k.startswith("lambda_max") for k in e)  # format 2: only the new name
        assert abs(e["esd_lambda_min"] - float(eig[0])) < LANCZOS_FULL_RTOL * float(eig.abs().max())
        assert abs(e["esd_lambda_max"] - float(eig[-1])) < LANCZOS_FULL_RTOL * float(eig.abs().max())
        assert e["ratio"] == pytest.approx(e["esd_lambda_min"] / e["esd_lambda_max"])
        # A complete Lanczos basis makes the deflated trace exact.
        assert abs(e["trace"] - float(H.trace())) < LANCZOS_FULL_RTOL * float(eig.abs().max())
        with torch.no_grad():
            logits = model(x[mask])
        assert e["loss"] == pytest.approx(float(LOSS(logits, y[mask])))
        assert e["accuracy"] == pytest.approx(100 * float((logits.argmax(1) == y[mask]).double().mean()))
    for name in ("summary.json", "esd_class_0.png", "esd_class_1.png", "esd_class_all.png",
                 "esd_grid.png", "eigen_by_class.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["entries"]["0"] == entries["0"]

    computed = []
    original = analysis.analyze_subset

    def counting(model, loss_fn, inputs, targets, settings, cache_samples):
        computed.append(sorted(set(targets.tolist())))
        return original(model, loss_fn, inputs, targets, settings, cache_samples)

    monkeypatch.setattr(analysis, "analyze_subset", counting)
    again = analyze_classes(model, LOSS, x, y, classes=[0, 1, 2], out_dir=tmp_path, **FAST)
    assert computed == [[2]]  # classes 0, 1 and "all" were kept
    assert again["entries"]["0"] == entries["0"]
    computed.clear()
    analyze_classes(model, LOSS, x, y, classes=[0], out_dir=tmp_path, **{**FAST, "seed": 1})
    assert computed == [[0], [0, 1, 2]]  # other settings: nothing reused


def test_analyze_classes_resumes_after_an_interruption(tmp_path, monkeypatch):
    model, x, y = analysis_inputs()
    original = analysis.analyze_subset
    computed = []

    def failing_on_class_1(model, loss_fn, inputs, targets, settings, cache_samples):
        if set(targets.tolist()) == {1}:
            raise KeyboardInterrupt
        computed.append(sorted(set(targets.tolist())))
        return original(model, loss_fn, inputs, targets, settings, cache_samples)

    settings = dict(FAST, slq_steps=6, trace_iters=5, include_all=False)
    monkeypatch.setattr(analysis, "analyze_subset", failing_on_class_1)
    with pytest.raises(KeyboardInterrupt):
        analyze_classes(model, LOSS, x, y, classes=[0, 1, 2], out_dir=tmp_path, **settings)
    assert list(json.loads((tmp_path / "summary.json").read_text())["entries"]) == ["0"]
    assert model.training is False
    computed.clear()
    monkeypatch.setattr(analysis, "analyze_subset", lambda *a: computed.append(1) or original(*a))
    summary = analyze_classes(model, LOSS, x, y, classes=[0, 1, 2], out_dir=tmp_path, **settings)
    assert len(computed) == 2 and list(summary["entries"]) == ["0", "1", "2"]


def test_reference_method_uses_power_iteration_and_plain_hutchinson(tmp_path):
    model, x, y = analysis_inputs()
    summary = analyze_classes(model, LOSS, x, y, classes=[1], out_dir=tmp_path, **FAST, method="reference",
                              include_all=False)
    e = summary["entries"]["1"]
    H = dense_hessian(model, x[y == 1], y[y == 1])
    eig = torch.linalg.eigvalsh(H)
    assert e["lambda_dominant_source"] == "power_iteration" and e["trace_method"] == "hutchinson"
    assert e["lambda_dominant_iterations"] < FAST["power_iters"]  # stopped by the rule the tolerance assumes
    assert abs(e["lambda_dominant"] - float(eig[eig.abs().argmax()])) < power_iteration_tolerance(
        eig, FAST["power_tol"], PRODUCT_RTOL)
    assert abs(e["trace"] - float(H.trace())) < 4 * e["trace_std_error"]


def test_compare_runs_rows_and_figure(tmp_path):
    model, x, y = analysis_inputs()
    settings = dict(FAST, slq_steps=8, trace_iters=5, include_all=False)
    a = analyze_classes(model, LOSS, x, y, classes=[0, 2], out_dir=tmp_path / "a", **settings)
    with torch.no_grad():
        model[-1].weight.mul_(1.5)
    analyze_classes(model, LOSS, x, y, classes=[2, 1], out_dir=tmp_path / "b", **settings)
    rows = compare_runs(a, tmp_path / "b", tmp_path / "cmp.png", labels=("plain", "scaled"))
    assert [r["class"] for r in rows] == ["2"]
    b = json.loads((tmp_path / "b" / "summary.json").read_text())["entries"]["2"]
    row = rows[0]
    assert row["lambda_dominant_a"] == a["entries"]["2"]["lambda_dominant"]
    assert row["lambda_dominant_diff"] == pytest.approx(b["lambda_dominant"] - row["lambda_dominant_a"])
    assert (tmp_path / "cmp.png").is_file()


def negative_dominant_problem():
    """Tanh MLP (seed 4, head scaled by 3) whose class-2 Hessian has eigenvalues from -1.52 to
    1.45: the eigenvalue of largest magnitude is negative."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, NUM_CLASSES)).to(DT).eval()
    with torch.no_grad():
        model[-1].weight.mul_(3.0)
    x, y = data((3,), n=12, seed=4)
    return model, x, y


@pytest.mark.parametrize("method", ["fast", "reference"])
def test_lambda_dominant_is_the_eigenvalue_of_largest_magnitude_beside_the_algebraic_extremes(tmp_path, method):
    model, x, y = negative_dominant_problem()
    eig = torch.linalg.eigvalsh(dense_hessian(model, x[y == 2], y[y == 2]))
    assert abs(float(eig[0])) > abs(float(eig[-1])) and float(eig[-1]) > 0  # the case at issue
    settings = dict(FAST, slq_steps=31, power_iters=2000, power_tol=1e-10)
    e = analyze_classes(model, LOSS, x, y, classes=[2], out_dir=tmp_path, **settings, method=method,
                        include_all=False)["entries"]["2"]
    scale = float(eig.abs().max())
    if method == "reference":  # power iteration, stopped on a relative change
        assert e["lambda_dominant_iterations"] < settings["power_iters"]
        assert abs(e["lambda_dominant"] - float(eig[0])) < power_iteration_tolerance(eig, 1e-10, PRODUCT_RTOL)
    else:
        assert abs(e["lambda_dominant"] - float(eig[0])) < LANCZOS_FULL_RTOL * scale
    assert abs(e["esd_lambda_max"] - float(eig[-1])) < LANCZOS_FULL_RTOL * scale  # full-length Lanczos
    assert abs(e["esd_lambda_min"] - float(eig[0])) < LANCZOS_FULL_RTOL * scale
    assert "lambda_max" not in e


# Keys as format 1 of summary.json wrote them (before the rename).
FORMAT_1_NAMES = {"lambda_dominant": "lambda_max", "lambda_dominant_source": "lambda_max_source",
                  "lambda_dominant_iterations": "lambda_max_iterations",
                  "lambda_dominant_converged": "lambda_max_converged",
                  "lambda_dominant_residual": "lambda_max_residual"}


def as_format_1(summary: dict) -> dict:
    entries = {k: {FORMAT_1_NAMES.get(q, q): v for q, v in e.items()} for k, e in summary["entries"].items()}
    return {**summary, "format": "ltsam.hessian.summary/1", "entries": entries}


def test_format_1_summaries_are_read_under_the_new_names_and_recomputed_on_rerun(tmp_path, monkeypatch):
    model, x, y = analysis_inputs()
    settings = dict(FAST, slq_steps=8, trace_iters=5, include_all=False)
    new = analyze_classes(model, LOSS, x, y, classes=[0, 2], out_dir=tmp_path / "new", **settings)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = as_format_1(new)
    assert "lambda_max" in old["entries"]["0"] and "lambda_dominant" not in old["entries"]["0"]
    (old_dir / "summary.json").write_text(json.dumps(old))
    for source in (old_dir, old_dir / "summary.json", old):
        loaded = analysis.load_summary(source)
        assert loaded["format"] == analysis.SUMMARY_FORMAT and loaded["entries"] == new["entries"]
    rows = compare_runs(old_dir, new, tmp_path / "cmp.png")
    assert [r["lambda_dominant_diff"] for r in rows] == [0.0, 0.0]
    assert rows[0]["lambda_dominant_a"] == new["entries"]["0"]["lambda_dominant"]
    # A rerun in the old folder recomputes (format 1 came from the older Lanczos recurrence).
    computed = []
    original = analysis.analyze_subset
    monkeypatch.setattr(analysis, "analyze_subset", lambda *a: computed.append(1) or original(*a))
    again = analyze_classes(model, LOSS, x, y, classes=[0, 2], out_dir=old_dir, **settings)
    assert len(computed) == 2
    written = json.loads((old_dir / "summary.json").read_text())
    assert written["format"] == analysis.SUMMARY_FORMAT and written["entries"] == again["entries"]
    assert "lambda_dominant" in written["entries"]["0"] and "lambda_max" not in written["entries"]["0"]
