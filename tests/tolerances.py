"""Rounding tolerances for tests that compare two floating-point computations of the same value.

Floating-point addition is not associative: two computations of one sum that add in different orders
(another kernel or blocking, BLAS or oneDNN, SIMD width, thread count, CPU) round differently and agree
only up to rounding. A tolerance for such a comparison is derived here, never picked by trial: it must
hold on every machine, and it must stay so far below a sign error or a factor of two that the test still
catches those.

The bound. Let u = eps / 2 be the unit roundoff (``torch.finfo(dtype).eps``: 2^-23 for float32, 2^-52
for float64). A sum or dot product of n terms, added in ANY order, has

    |computed - exact| <= gamma(n) * sum |terms|,    gamma(n) = n u / (1 - n u) ~ n u

(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1 and §4.2). Two such computations
therefore differ by at most 2 gamma(n) ~ n eps relative to sum |terms|. A computation that runs ``stages``
such sums one after the other (the layers of a network forward, then backward, then the second pass of a
Hessian-vector product; the steps of a short training run) adds their relative errors to first order, so

    rtol(dtype, n, stages) = stages * n * eps(dtype),    n: the longest sum.

A single rounding (a float64 value stored as float32, an elementwise op) is the case n = 1: ``rtol(dtype)``
is eps, twice the unit roundoff. The bound is relative to the size of the terms: where a result cancels
(|sum| << sum |terms|), compare with an absolute tolerance ``rtol(...) * scale``, ``scale`` the size of the
terms.

This is the worst case (every rounding error of the same sign and full size); in practice errors partly
cancel and grow like sqrt(n) u (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019), so the bound leaves a
wide margin on any machine. It is also why a deep float32 computation cannot be checked tightly: a
ResNet-32 Hessian-vector product (n ~ 10^3-10^4 terms per sum, ~10^2 stages) has a float32 bound of a few
percent, while in float64 the same bound is ~10^-11. Tests whose point is the algebra therefore run in
float64; ``rtol`` refuses a bound above ``MAX_RTOL``, where a comparison no longer clearly separates
rounding from a bug.
"""

from __future__ import annotations

import torch

MAX_RTOL = 1e-3


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating-point dtype (twice its unit roundoff)."""
    return torch.finfo(dtype).eps


def rtol(dtype: torch.dtype, n: int = 1, stages: int = 1) -> float:
    """Worst-case relative difference of two computations of one value: ``stages * n * eps(dtype)``.

    ``n`` is the number of terms in the longest sum, ``stages`` the number of such sums (or roundings)
    in sequence; relative to the size of the terms (see the module docstring).
    """
    if n < 1 or stages < 1:
        raise ValueError(f"n and stages must be positive, got n={n}, stages={stages}")
    bound = stages * n * eps(dtype)
    if bound > MAX_RTOL:
        raise ValueError(f"a {dtype} bound of {bound:.2g} (n={n}, stages={stages}) cannot tell rounding from a "
                         "bug; compare in float64")
    return bound
