"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (bad path, value, file) — not a bug in ltsam.

    The message names the problem and the fix; the CLI shows it without a traceback.
    """


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the run stops with the last finite checkpoint kept.

    The CLI prints the message on one line and exits with code 3 (a run that failed, not a bad flag).
    """

    exit_code = 3
