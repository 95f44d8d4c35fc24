"""Stopping cleanly: SIGTERM unwinds like Ctrl-C, a full disk is recognised, and a test-only kill hook."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

# OSError numbers that mean "the disk (or the user's quota) is full".
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell's convention
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), e.g. a batch scheduler's or `kill`'s stop


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a stop by ``kill`` or a scheduler unwinds like Ctrl-C:
    temporary files are removed, the run folder's lock is released, the last checkpoint stays whole."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after."""
    def raise_terminated(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_arrivals: dict[str, int] = {}


def fault_point(name: str) -> None:
    """TEST HOOK (tests/test_faults.py): SIGKILL this process at a named point, to prove that a run
    killed there resumes exactly. ``LTSAM_FAULT=POINT`` kills at the first arrival at POINT,
    ``LTSAM_FAULT=POINT@N`` at the N-th. Points: ``step`` (after a training step) and
    ``write:FILE`` (FILE's temporary copy written, not yet renamed over FILE). Unset: does nothing."""
    want = os.environ.get("LTSAM_FAULT")
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
