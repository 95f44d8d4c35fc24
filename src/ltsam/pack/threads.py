"""Worker threads that run a pack's members side by side on a CPU (``PackedModel(mode="threads")``).

A small model's CPU kernels (the digits CNN's, a CIFAR ResNet-32's at batch 128) are too small to keep every
core busy, and between them Python holds the interpreter; G members that run their forward and backward passes
on different threads overlap both (PyTorch releases the GIL inside its kernels, and a backward pass on a CPU runs
on the thread that calls it). Member g always runs on worker g mod W, in member order, so a pack computes the
same bits every time it runs on the same machine with the same thread settings.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ltsam.run.runtime import process_threads


class MemberThreads:
    """``workers`` daemon threads, each with ``each`` intra-op threads (``torch.set_num_threads`` is per
    thread for the kernels it runs). :meth:`map` runs job i on worker i mod ``workers`` and waits for all."""

    def __init__(self, workers: int, each: int):
        if workers < 1 or each < 1:
            raise ValueError(f"workers and threads per worker must be positive, got {workers} and {each}")
        self.workers, self.each = workers, each
        self._queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(workers)]
        ready = threading.Barrier(workers + 1)
        total = torch.get_num_threads()
        for q in self._queues:
            threading.Thread(target=self._work, args=(q, ready), daemon=True, name="ltsam-pack-member").start()
        ready.wait()
        torch.set_num_threads(total)  # the workers' calls set the process default too: the caller's stays

    def _work(self, jobs: queue.SimpleQueue, ready: threading.Barrier) -> None:
        torch.set_num_threads(self.each)
        ready.wait()
        while True:
            fn, out, i, done, cancelled = jobs.get()
            try:
                if cancelled.is_set():  # the caller was interrupted: a job not yet begun is dropped
                    raise Cancelled()
                out[i] = (True, fn())
            except BaseException as exc:  # handed to the caller, which raises it  # noqa: BLE001
                out[i] = (False, exc)
            done.release()

    def map(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Each job's result, in order; the first job's exception (in order) is raised once all have ended.
        Interrupted while waiting (Ctrl-C, SIGTERM), it drops the jobs not yet begun and waits for the running
        ones before the interrupt goes on: a worker left inside a kernel while the interpreter exits aborts the
        process ("terminate called without an active exception")."""
        out: list[Any] = [None] * len(jobs)
        done, cancelled = threading.Semaphore(0), threading.Event()
        for i, fn in enumerate(jobs):
            self._queues[i % self.workers].put((fn, out, i, done, cancelled))
        waited = 0
        try:
            for _ in jobs:
                done.acquire()
                waited += 1
        except BaseException:
            cancelled.set()
            _drain(done, len(jobs) - waited)
            raise
        for ok, value in out:
            if not ok:
                raise value
        return [value for _, value in out]


class Cancelled(Exception):
    """A job dropped before it began (its caller was interrupted)."""


def _drain(done: threading.Semaphore, left: int) -> None:
    """Wait for ``left`` more jobs to end, through further interrupts (a second Ctrl-C while the workers finish
    their kernels would otherwise leave them running as the process exits)."""
    while left:
        try:
            done.acquire()
            left -= 1
        except BaseException:  # noqa: BLE001, S112 - the first interrupt is already on its way
            continue


@functools.cache
def member_threads(workers: int, each: int) -> MemberThreads:
    """The process's pool of ``workers`` threads with ``each`` intra-op threads (made once, kept: a pack that
    is rebuilt when a member stops reuses it)."""
    return MemberThreads(workers, each)


def thread_plan(members: int, per_member: int | None = None, workers: int | None = None,
                budget: int | None = None) -> tuple[int, int]:
    """(workers, intra-op threads each) for ``members`` members sharing ``budget`` intra-op threads (default: the
    process's, ``ltsam.run.runtime.process_threads``). With ``per_member`` (a run's own thread count: the small
    CNN's 1, ``--threads``) each worker has that many and there are as many workers as fit; without it one worker
    per member up to the budget, which they share evenly. ``workers`` fixes the number (at most one per member)."""
    budget = budget if budget is not None else process_threads()
    fit = budget // per_member if per_member else budget
    w = max(1, min(members, workers if workers is not None else fit))
    return w, per_member or max(1, budget // w)
