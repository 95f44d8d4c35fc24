"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A problem with what the user asked for (bad path, value, file) — not a bug in ltsam.

    The message names the problem and the fix; the CLI shows it without a traceback.
    """


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the run stops with the last finite checkpoint kept.

    The CLI prints the message on one line and exits with code 3 (a run that failed, not a bad flag).
    """

    exit_code = 3


def exit_code_of(command: Callable[[Any], Any], args: Any) -> int:
    """Run a command and turn how it ended into the CLI's exit code: 0 (or its own), 2 with one line for
    a UserError or a file the system refused (an OSError with an errno), 3 for a diverged run, 130 for
    Ctrl-C (SIGTERM is handled by ``ltsam train`` itself)."""
    try:
        return int(command(args) or 0)
    except UserError as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return TrainingDiverged.exit_code
    except OSError as exc:  # the system refused a file (permissions, a full or read-only disk): not a bug
        if exc.errno is None:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ltsam: error: cannot use{where} ({exc.strerror}); fix the cause (permissions, free space, a "
              f"read-only folder) and run the command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltsam: interrupted; `ltsam train --resume RUN_DIR` continues a training run", file=sys.stderr)
        return 130
