"""The command lines that start ltsam in a child process the way the installed ``ltsam`` command does.

``python -m ltsam`` (and ``python -c``) put the working folder first on ``sys.path``, so a ``tqdm.py`` or
``yaml.py`` lying there would be imported by the training instead of the real package; the console
script does not. These commands start Python with a short snippet that drops the working folder from
``sys.path`` before it imports anything (``site`` runs before the working folder is added, so only the
snippet's own imports matter), then runs ltsam's (or torchrun's) ``main``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

# Drops the entries that mean "the working folder" ('' from -c, '.') before any import of ours.
_STRIP = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
LTSAM_SNIPPET = _STRIP + "from ltsam.cli import main; sys.exit(main(sys.argv[1:]))"
TORCHRUN_SNIPPET = _STRIP + "from torch.distributed.run import main; sys.exit(main())"
# submitit's job process (``python -u -m submitit.core._submit FOLDER``, which unpickles the job and so imports
# ltsam): submitit appends ``-u -m submitit.core._submit FOLDER`` to the command, of which only FOLDER is kept.
SUBMITIT_SNIPPET = _STRIP + ("sys.argv[1:] = sys.argv[-1:]; from submitit.core.submission import submitit_main; "
                             "submitit_main()")
# Exit 0 when the run folder sys.argv[1] holds a finished run (all its epochs), else 1.
FINISHED_SNIPPET = _STRIP + ("from pathlib import Path; from ltsam.runs import run_finished; "
                             "sys.exit(0 if run_finished(Path(sys.argv[1])) else 1)")


def ltsam_command(args: Sequence[str], python: str | None = None) -> list[str]:
    """``ltsam ARGS`` as a child process of ``python`` (default: this interpreter)."""
    return [python or sys.executable, "-c", LTSAM_SNIPPET, *args]


def torchrun_command(args: Sequence[str], gpus: int, python: str | None = None) -> list[str]:
    """``torchrun --standalone --nproc_per_node=GPUS ltsam ARGS``, started safely, with ``--no-python`` so that
    each worker runs :func:`ltsam_command` (never ``python -m ltsam``)."""
    python = python or sys.executable
    return [python, "-c", TORCHRUN_SNIPPET, "--standalone", f"--nproc_per_node={gpus}", "--no-python",
            *ltsam_command(args, python)]


def submitit_python(python: str | None = None) -> str:
    """The ``python`` of submitit's LocalExecutor (a shell-quoted command) that runs its jobs safely."""
    return shlex.join([python or sys.executable, "-u", "-c", SUBMITIT_SNIPPET])


def without_working_folder(path: list[str], cwd: str, safe_path: bool) -> list[str]:
    """``sys.path`` without the working folder that ``python -m`` put first (``''`` or ``cwd``); unchanged under
    ``python -P`` / ``-I`` (``safe_path``), which add none."""
    if safe_path or not path or path[0] not in ("", ".", cwd):
        return list(path)
    return path[1:]
