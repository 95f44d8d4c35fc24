"""Threads mode's worker pool (ltsam.pack.threads) and the fused model's threaded passes."""

from __future__ import annotations

import threading

import pytest
import torch

from ltsam.models import build_model
from ltsam.pack.model import PackedModel
from ltsam.pack.threads import MemberThreads, member_threads, thread_plan
from ltsam.run.runtime import process_threads
from tests.tolerances import rtol


def test_jobs_run_on_their_workers_in_order():
    """Job i runs on worker i mod W (a member always on the same thread), results come back in job order, and
    every worker has its share of intra-op threads while the caller keeps its own."""
    before = torch.get_num_threads()
    pool = MemberThreads(3, 1)
    assert torch.get_num_threads() == before

    def job(i: int):
        return lambda: (i, threading.get_ident(), torch.get_num_threads())

    first = pool.map([job(i) for i in range(7)])
    again = pool.map([job(i) for i in range(7)])
    assert [r[0] for r in first] == list(range(7))
    assert {r[2] for r in first} == {1}
    idents = [r[1] for r in first]
    assert len(set(idents)) == 3 and threading.get_ident() not in idents
    assert all(idents[i] == idents[i % 3] for i in range(7))
    assert [r[1] for r in again] == idents


def test_a_failing_job_raises_in_the_caller_after_all_end():
    pool = MemberThreads(2, 1)
    ran = []

    def ok(i: int):
        return lambda: ran.append(i)

    def bad():
        raise FloatingPointError("member 1")

    with pytest.raises(FloatingPointError, match="member 1"):
        pool.map([ok(0), bad, ok(2), ok(3)])
    assert sorted(ran) == [0, 2, 3]  # the others finished
    assert pool.map([lambda: 5]) == [5]  # and the pool still works


def test_thread_plan_shares_the_intra_op_threads():
    """Without a per-run thread count the workers (one per member, at most the budget) share the budget; with
    one (the small CNN's 1, --threads) each worker has it and as many workers as fit run."""
    assert thread_plan(1, budget=8) == (1, 8)
    assert thread_plan(3, budget=8) == (3, 2)
    assert thread_plan(100, budget=8) == (8, 1)
    assert thread_plan(9, per_member=1, budget=8) == (8, 1)
    assert thread_plan(9, per_member=3, budget=8) == (2, 3)
    assert thread_plan(2, per_member=4, budget=2) == (1, 4)  # a run's own count wins: one worker
    assert thread_plan(3, workers=2, budget=8) == (2, 4)
    assert thread_plan(2, workers=5, budget=8) == (2, 4)  # never more workers than members
    assert thread_plan(3) == thread_plan(3, budget=process_threads())
    assert member_threads(2, 1) is member_threads(2, 1)  # one pool per plan in a process


def test_threaded_evaluation_follows_the_callers_autocast_and_grad_mode():
    """Autocast and grad mode are per thread: the workers take the caller's (bfloat16 logits under its
    autocast, no graph under no_grad), and equal loop mode's logits to rounding."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("small_cnn", 10, False, 1).eval())
    x = torch.randn(3, 4, 1, 8, 8)
    threads, loop = PackedModel(models, mode="threads", workers=2).eval(), PackedModel(models, mode="loop").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = threads(x), loop(x)
    assert a.dtype == b.dtype == torch.bfloat16 and not a.requires_grad
    with torch.no_grad():
        c, d = threads(x), loop(x)
    assert c.dtype == torch.float32
    with torch.enable_grad():  # with gradients, threads mode's forward is loop's (its graph reaches the stack)
        e = threads(x)
    assert e.requires_grad
    e.sum().backward()
    assert all(p.grad is not None for p in threads.stacked_parameters())
    tol = rtol(torch.float32, 64 * 9, 4)  # the same kernels, maybe at another thread count: 4 layers' sums
    torch.testing.assert_close(c, d, rtol=tol, atol=tol * float(d.abs().max()))
