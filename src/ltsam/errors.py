"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (bad path, value, file) — not a bug in ltsam.

    The message names the problem and the fix; the CLI shows it without a traceback.
    """
