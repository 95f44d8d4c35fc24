"""A sweep as a plain SLURM job-array script (``ltsam sweep GRID --emit-sbatch FILE``), for clusters where
submitit cannot run on the login node, or for people who keep their own sbatch files.

The script has one ``case`` line per run (array task k runs run k). Each task skips a run that is finished
(:func:`ltsam.runs.run_finished`) and resumes one that holds a ``last.pt``, so submitting the same file again,
or SLURM's requeue after a pre-emption (``--requeue``), continues where the runs stopped.

Nothing of the grid or the command line reaches bash unquoted: bash words go through ``shlex.quote``, and
``#SBATCH`` values are written as sbatch's own parser reads them (whitespace splits, ``#`` starts a comment,
``"..."`` groups, a backslash escapes the next character); what no ``#SBATCH`` line can hold (a line break, a
control character) is refused in one line.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from ltsam.errors import UserError
from ltsam.launcher import FINISHED_SNIPPET, ltsam_command, torchrun_command
from ltsam.sweep.grid import Sweep
from ltsam.sweep.launch import LaunchOptions, gpus_per_run, pack_args, resume_args, start_args
from ltsam.sweep.state import job_file, run_dir, runs_dir, settings_file

SLURM_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # an sbatch long option's name
PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(,[A-Za-z0-9][A-Za-z0-9._+-]*)*")  # one or several, comma-separated
_PLAIN = re.compile(r"[A-Za-z0-9._+,:=@/-]*")  # an #SBATCH value that needs no quotes
_PY = "\0python\0"  # stands for "$PY" (the script's interpreter, LTSAM_PYTHON overrides it) while words are quoted

_RUN = r'''run() {  # run RUN_DIR: skip a finished run, resume an interrupted one ("${resume[@]}"), else start it
    local dir=$1
    if "$PY" -c "$FINISHED" "$dir"; then echo "ltsam sweep: $dir is done"; return 0; fi
    if [[ -f "$dir/last.pt" ]]; then exec "${LTSAM[@]}" "${resume[@]}"; fi
    exec "${LTSAM[@]}" "${fresh[@]}"
}
pack() {  # a pack: its members file says which runs are done, interrupted or to start
    exec "${LTSAM[@]}" "${fresh[@]}"
}
'''


def check_slurm_text(what: str, value: str) -> str:
    """``value`` if an ``#SBATCH`` line can hold it, else a UserError naming ``what`` (one line)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{what} {value!r} holds a line break or control character, which no #SBATCH line can "
                        f"hold; remove it")
    if re.search("packjob|hetjob", value, re.IGNORECASE):
        raise UserError(f"{what} {value!r}: sbatch reads 'packjob'/'hetjob' anywhere in an #SBATCH line as a "
                        f"job separator; rename it")
    return value


def check_slurm_options(opts: LaunchOptions) -> None:
    """Refuse a partition or ``--slurm-arg`` that is not a plain name, or a value no #SBATCH line can hold."""
    if opts.partition is not None and not PARTITION.fullmatch(opts.partition):
        raise UserError(f"--partition {opts.partition!r}: a partition name holds only letters, digits and . _ + - "
                        f"(several: comma-separated)")
    for key, value in opts.slurm_args.items():
        if not SLURM_KEY.fullmatch(key):
            raise UserError(f"--slurm-arg {key!r}: an sbatch option name holds only letters, digits, - and _, "
                            f"e.g. --slurm-arg account=myproject")
        check_slurm_text(f"--slurm-arg {key}", value)


def sbatch_word(value: str) -> str:
    """``value`` as one argument of an ``#SBATCH`` line (double-quoted, ``\\`` and ``"`` escaped, when needed)."""
    check_slurm_text("#SBATCH value", value)
    if _PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bash(words: list[str]) -> str:
    return " ".join('"$PY"' if w == _PY else shlex.quote(w) for w in words)


def sbatch_script(sweep: Sweep, opts: LaunchOptions, python: str | None = None) -> str:
    """The text of the job-array script for every run of ``sweep``."""
    check_slurm_options(opts)
    n = len(sweep.jobs)
    gpus = gpus_per_run(LaunchOptions(**{**opts.__dict__, "executor": "slurm"}))
    out = sweep.out.resolve()
    log = str(out / "logs").replace("%", "%%") + "/%A_%a.out"  # sbatch expands %-patterns in --output
    launch = torchrun_command([], gpus, _PY) if gpus > 1 else ltsam_command([], _PY)  # torchrun: one process a GPU
    lines = ["#!/bin/bash",
             f"# ltsam sweep {sweep.name}: {len(sweep.runs)} runs in {n} jobs as one SLURM job array, written by "
             f"`ltsam sweep --emit-sbatch`.",
             "# Submit with `sbatch THIS_FILE`. A finished run is skipped and an interrupted one resumes from its",
             "# last.pt, so submitting again (or a requeue after pre-emption) continues the sweep.",
             f"#SBATCH --job-name=ltsam-{sweep.name}",
             f"#SBATCH --array=0-{n - 1}%{min(n, opts.array_parallelism or n)}",
             f"#SBATCH --time={opts.timeout_min or 24 * 60}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks-per-node=1",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append",
             f"#SBATCH --output={sbatch_word(log)}"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if opts.cpus_per_run:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_run}")
    if opts.mem_gb:
        lines.append(f"#SBATCH --mem={opts.mem_gb:g}G")
    lines += [f"#SBATCH --{k.replace('_', '-')}={sbatch_word(str(v))}" for k, v in opts.slurm_args.items()]
    lines += ["set -euo pipefail",
              f"PY=${{LTSAM_PYTHON:-{shlex.quote(python or sys.executable)}}}",
              f"LTSAM=({_bash(launch)})  # as the installed `ltsam` starts: no file of the working folder is imported",
              f"FINISHED={shlex.quote(FINISHED_SNIPPET)}",
              f"mkdir -p {shlex.quote(str(out / 'logs'))}",
              _RUN.rstrip(),
              'case "${SLURM_ARRAY_TASK_ID:?submit this file with sbatch (or set SLURM_ARRAY_TASK_ID)}" in']
    for k, job in enumerate(sweep.jobs):
        if job.packed:
            members = pack_args(job_file(sweep, job).resolve(), job.plugins, runs_dir(sweep).resolve())
            lines.append(f"    {k}) fresh=({_bash(members)})")
            lines.append("       pack ;;")
            continue
        run = job.runs[0]
        folder = str(run_dir(sweep, run).resolve())
        settings = str(settings_file(sweep, run).resolve())
        lines.append(f"    {k}) fresh=({_bash(start_args(folder, settings, run.plugins))})")
        lines.append(f"       resume=({_bash(resume_args(folder, run.plugins))})")
        lines.append(f"       run {shlex.quote(folder)} ;;")
    lines += ['    *) echo "ltsam sweep: no run $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def write_sbatch(path: str | Path, script: str) -> Path:
    """Write the script (:func:`sbatch_script`) atomically, executable."""
    from ltsam.io import check_writable_file, write_text

    path = check_writable_file(path, "--emit-sbatch")
    write_text(path, script)
    path.chmod(0o755)
    return path
