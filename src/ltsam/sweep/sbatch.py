"""A sweep as a plain SLURM job-array script (``ltsam sweep GRID --emit-sbatch FILE``), for clusters where
submitit cannot run on the login node, or for people who keep their own sbatch files.

The script has one ``case`` line per run (array task k runs run k). Each task skips a run that is done
and resumes one that holds a ``last.pt``, so submitting the same file again, or SLURM's requeue after a
pre-emption (``--requeue``), continues where the runs stopped.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ltsam.sweep.grid import Sweep
from ltsam.sweep.launch import LaunchOptions, gpus_per_run
from ltsam.sweep.state import run_dir

_RUN = r'''run() {  # run RUN_DIR FLAGS...: skip a finished run, resume an interrupted one, else start it
    local dir=$1; shift
    if [[ -f "$dir/final.json" ]]; then echo "ltsam sweep: $dir is done"; return 0; fi
    if [[ -f "$dir/last.pt" ]]; then set -- --resume "$dir"; else set -- "$@" --out "$dir" --overwrite; fi
    if (( GPUS > 1 )); then
        exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m ltsam train "$@" --no-progress
    fi
    exec "$PY" -m ltsam train "$@" --no-progress
}
'''


def sbatch_script(sweep: Sweep, opts: LaunchOptions, python: str | None = None) -> str:
    """The text of the job-array script for every run of ``sweep``."""
    n = len(sweep.runs)
    gpus = gpus_per_run(LaunchOptions(**{**opts.__dict__, "executor": "slurm"}))
    out = sweep.out.resolve()
    lines = ["#!/bin/bash",
             f"# ltsam sweep {sweep.name}: {n} runs as one SLURM job array, written by "
             f"`ltsam sweep {sweep.source} --emit-sbatch`.",
             "# Submit with `sbatch THIS_FILE`. A finished run is skipped and an interrupted one resumes from its",
             "# last.pt, so submitting again (or a requeue after pre-emption) continues the sweep.",
             f"#SBATCH --job-name=ltsam-{sweep.name}",
             f"#SBATCH --array=0-{n - 1}%{min(n, opts.array_parallelism or n)}",
             f"#SBATCH --time={opts.timeout_min or 24 * 60}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks-per-node=1",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append",
             f"#SBATCH --output={out}/logs/%A_%a.out"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if opts.cpus_per_run:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_run}")
    if opts.mem_gb:
        lines.append(f"#SBATCH --mem={opts.mem_gb:g}G")
    lines += [f"#SBATCH --{k.replace('_', '-')}={shlex.quote(str(v))}" for k, v in opts.slurm_args.items()]
    lines += ["set -euo pipefail",
              f"PY=${{LTSAM_PYTHON:-{shlex.quote(python or sys.executable)}}}",
              f"GPUS={gpus}",
              f"mkdir -p {shlex.quote(str(out / 'logs'))}",
              _RUN.rstrip(),
              'case "${SLURM_ARRAY_TASK_ID:?submit this file with sbatch (or set SLURM_ARRAY_TASK_ID)}" in']
    for k, run in enumerate(sweep.runs):
        args = " ".join(shlex.quote(a) for a in [str(run_dir(sweep, run).resolve()), *run.argv])
        lines.append(f"    {k}) run {args} ;;")
    lines += ['    *) echo "ltsam sweep: no run $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def write_sbatch(sweep: Sweep, path: str | Path, opts: LaunchOptions) -> Path:
    from ltsam.io import check_writable_file, write_text

    path = check_writable_file(path, "--emit-sbatch")
    write_text(path, sbatch_script(sweep, opts))
    path.chmod(0o755)
    return path
