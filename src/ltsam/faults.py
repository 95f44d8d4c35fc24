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


_held_signals: list[BaseException] = []  # a stop that arrived while a checkpoint was being written
_holding = [0]  # how deep in :func:`signals_held` blocks the main thread is


def _stop_with(kind: type[KeyboardInterrupt]):
    """A signal handler raising ``kind`` in the main thread, or keeping it for the end of a
    :func:`signals_held` block."""
    def handler(signum, frame):
        if _holding[0]:
            _held_signals.append(kind())
            return
        raise kind()

    return handler


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` (Python's own
    handler, where nobody replaced it), both held back inside :func:`signals_held`; the previous handlers are
    restored after."""
    try:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _stop_with(Terminated))}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _stop_with(KeyboardInterrupt))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _held_signals.clear()


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block (a checkpoint being written), Ctrl-C and SIGTERM wait for its end. ``torch.save``'s C++
    writer calls back into Python, and an exception a signal handler raises there tears the file's record
    ("unexpected pos") or aborts the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'"); held back, the stop comes right after, with every file whole."""
    _holding[0] += 1
    try:
        yield
    finally:
        _holding[0] -= 1
        stop = _held_signals[0] if _held_signals and not _holding[0] else None
        if not _holding[0]:
            _held_signals.clear()
    if stop is not None:
        raise stop


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
