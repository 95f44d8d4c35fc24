"""The rounding bound of tests/tolerances.py: its value, its guard, and that it holds for reordered sums."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import MAX_RTOL, eps, rtol


def test_rtol_is_stages_times_n_times_eps():
    assert eps(torch.float32) == 2.0**-23 and eps(torch.float64) == 2.0**-52
    assert rtol(torch.float32) == 2.0**-23
    assert rtol(torch.float64, n=1024, stages=128) == 128 * 1024 * 2.0**-52


def test_rtol_refuses_bounds_that_cannot_tell_rounding_from_a_bug():
    with pytest.raises(ValueError, match="float64"):
        rtol(torch.float32, n=1024, stages=128)  # a ResNet-32 Hessian-vector product in float32
    assert rtol(torch.float64, n=1024, stages=128) < MAX_RTOL
    with pytest.raises(ValueError):
        rtol(torch.float64, n=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_orders_of_one_sum_differ_by_less_than_the_bound(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g, dtype=torch.float64)
    x[::7] *= 1e3  # terms of mixed sizes and signs
    t = x.to(dtype)
    pairwise = float(t.sum())  # torch's blocked / pairwise reduction
    sequential = 0.0
    for v in t.tolist()[::-1]:  # one by one, in the other direction, rounding to dtype at every step
        sequential = float(torch.tensor(sequential + v, dtype=dtype))
    size = float(t.double().abs().sum())
    assert abs(pairwise - sequential) <= rtol(dtype, n=len(t)) * size
    assert pairwise != sequential or dtype == torch.float64  # the orders do round differently in float32
