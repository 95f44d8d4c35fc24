"""``ltsam sweep GRID``: expand and check a grid, then run what is not done (local, debug or SLURM), or
write it as a plain sbatch array script."""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import TYPE_CHECKING, Any

from ltsam.argtypes import non_negative_int, positive_int
from ltsam.errors import UserError
from ltsam.sweep.grid import __doc__ as GRID_DOC
from ltsam.sweep.grid import load_sweep

if TYPE_CHECKING:
    from ltsam.sweep.grid import Sweep
    from ltsam.sweep.launch import LaunchOptions


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid of configurations x seeds (submitit: local, or SLURM arrays)",
                       description="Run every configuration x seed of a YAML grid, each into its own run folder "
                                   "under SWEEP/runs/. Every entry is checked before any run starts; re-running "
                                   "skips finished runs and resumes interrupted ones from last.pt.\n\n" + GRID_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="the YAML grid file")
    p.add_argument("--out", help="the sweep folder (default: the grid's out, else runs/sweeps/<name>)")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], default="local",
                   help="local: submitit's LocalExecutor, --parallel runs at once on this machine (default); "
                        "slurm: one SLURM job array; debug: one run after another, from this process")
    p.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                   help="local: runs at once (they share this machine's GPUs; several small runs fit one GPU)")
    p.add_argument("--gpus-per-run", type=non_negative_int, metavar="G",
                   help="GPUs per run (default 1 where CUDA is present, else 0); above 1 a run uses torchrun")
    p.add_argument("--timeout-min", type=positive_int, metavar="M",
                   help="time limit of one job in minutes (SLURM --time, default 1440; a run that hits it is "
                        "requeued and resumes; local default: 3 days)")
    g = p.add_argument_group("SLURM (--executor slurm, --emit-sbatch)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--array-parallelism", type=positive_int, metavar="K",
                   help="runs of the array at once (default: all)")
    g.add_argument("--cpus-per-run", type=positive_int, metavar="C", help="CPU cores per run (--cpus-per-task)")
    g.add_argument("--mem-gb", type=float, help="memory per run in GB")
    g.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any further sbatch option, e.g. account=proj or qos=high (repeatable)")
    g.add_argument("--resubmit", action="store_true",
                   help="submit runs again whose earlier SLURM job's state cannot be read (no sacct)")
    g.add_argument("--emit-sbatch", metavar="FILE",
                   help="write a plain sbatch job-array script (one line per run) instead of running anything")
    p.add_argument("--pack", type=positive_int, metavar="N",
                   help="train compatible runs (same architecture, data, schedule; see docs/packs.md) as packs of at "
                        "most N, one fused model and one job each (default: the grid's pack:, else 1)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list the runs (and packs); start "
                                                          "nothing")
    p.set_defaults(func=cmd_sweep)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _slurm_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-arg {item!r}: write KEY=VALUE, e.g. --slurm-arg account=myproject")
        out[key.strip().lstrip("-")] = value
    return out


def cmd_sweep(args: argparse.Namespace) -> int:
    from ltsam.sweep.folder import check_sweep_dir, open_sweep_dir
    from ltsam.sweep.launch import LaunchOptions
    from ltsam.sweep.sbatch import check_slurm_options
    from ltsam.sweep.state import check_folders

    if args.mem_gb is not None and not args.mem_gb > 0:
        raise UserError(f"--mem-gb must be positive, got {args.mem_gb}")
    opts = LaunchOptions(executor=args.executor, parallel=args.parallel, gpus_per_run=args.gpus_per_run,
                         timeout_min=args.timeout_min, partition=args.partition,
                         array_parallelism=args.array_parallelism, cpus_per_run=args.cpus_per_run,
                         mem_gb=args.mem_gb, slurm_args=_slurm_args(args.slurm_arg), resubmit=args.resubmit)
    check_slurm_options(opts)  # a partition or --slurm-arg that no #SBATCH line can hold safely: one line
    # every entry checked here: nothing has started yet (a dry run imports no plugin: it runs no code of the grid's)
    sweep = load_sweep(args.grid, args.out, run_plugins=not args.dry_run, pack=args.pack)
    if sweep.pack > 1 and (args.gpus_per_run or 0) > 1:
        raise UserError(f"--gpus-per-run {args.gpus_per_run}: a pack trains in one process on one GPU; use "
                        f"--gpus-per-run 1 with --pack, or leave --pack out")
    check_sweep_dir(sweep.out)  # the working folder, or someone else's: refused, untouched
    check_folders(sweep)
    configs = len({r.config for r in sweep.runs})
    seeds = len({r.seed for r in sweep.runs})
    print(f"ltsam sweep {sweep.name}: {len(sweep.runs)} runs ({configs} config(s) x "
          f"{len(sweep.runs) // (configs * seeds)} grid point(s) x {seeds} seed(s)) in {sweep.out}", flush=True)
    if args.dry_run:
        packs = [j for j in sweep.jobs if j.packed]
        if sweep.pack > 1:
            print(f"  {len(sweep.jobs)} jobs: {len(packs)} pack(s) of at most {sweep.pack} runs, "
                  f"{len(sweep.jobs) - len(packs)} run(s) alone", flush=True)
        for job in sweep.jobs:
            indent = "  "
            if job.packed:
                print(f"  {job.name}: {len(job.runs)} runs as one pack")
                indent = "    "
            for run in job.runs:
                what = run.config_hash if run.checked else f"not checked: names plugin(s) {', '.join(run.plugins)}"
                print(f"{indent}{run.name}  [{what}]  {json.dumps(run.settings, default=str)}")
        return 0
    script = _check_launch(sweep, args, opts)  # all a refusal could name, before the sweep folder is made
    held = open_sweep_dir(sweep.out)  # marked ours, and locked until this command ends
    try:
        return _sweep(sweep, args, opts, script)
    finally:
        held.release()


def _check_launch(sweep: Sweep, args: argparse.Namespace, opts: LaunchOptions) -> str | None:
    """What can refuse the launch, checked before the sweep folder is made (a refused command leaves nothing
    behind): the sbatch script (built whole) and its path, or the executor's needs. Returns the script's text."""
    from ltsam.io import check_writable_file
    from ltsam.sweep.launch import check_executor
    from ltsam.sweep.sbatch import sbatch_script

    if not args.emit_sbatch:
        check_executor(opts)
        return None
    script = sbatch_script(sweep, opts)
    check_writable_file(args.emit_sbatch, "--emit-sbatch")
    return script


def _sweep(sweep: Sweep, args: argparse.Namespace, opts: LaunchOptions, script: str | None) -> int:
    """Write the sbatch script, or run (or submit) what is not done, with the sweep folder locked."""
    from ltsam.sweep.launch import gpus_per_run, run_local, still_queued, submit_slurm
    from ltsam.sweep.sbatch import write_sbatch
    from ltsam.sweep.state import DONE, INTERRUPTED, Manifest, write_settings

    write_settings(sweep)  # each run's settings as data: the --config file of its `ltsam train`
    if script is not None:
        manifest = Manifest(sweep)
        manifest.refresh()
        manifest.save()
        path = write_sbatch(args.emit_sbatch, script)
        print(f"wrote {path}: one SLURM array task per run; submit it with `sbatch {path}`; "
              f"`ltsam report {sweep.out}` summarises the runs", flush=True)
        return 0
    manifest = Manifest(sweep)
    states = manifest.refresh()
    manifest.save()
    done = [r for r in sweep.runs if states[r.name] == DONE]
    todo = [r for r in sweep.runs if states[r.name] != DONE]
    queued = []
    if opts.executor == "slurm":
        for run in list(todo):
            state = still_queued(sweep, manifest, run)
            if state is not None and not (state == "UNKNOWN" and opts.resubmit):
                queued.append(f"{run.name} ({state})")
                todo.remove(run)
    resumed = sum(states[r.name] == INTERRUPTED for r in todo)
    print(f"  {len(done)} done (skipped), {resumed} interrupted (resumed from last.pt), "
          f"{len(todo) - resumed} to start" + (f", {len(queued)} still with their SLURM job" if queued else ""),
          flush=True)
    if queued:
        print(f"  left to their jobs: {', '.join(queued[:6])}{' ...' if len(queued) > 6 else ''}"
              + (" (UNKNOWN: no sacct; --resubmit submits them again)" if any("UNKNOWN" in q for q in queued)
                 else ""), flush=True)
    if not todo:
        print(f"nothing to run; `ltsam report {sweep.out}` summarises the runs")
        return 0
    if opts.executor == "slurm":
        submit_slurm(sweep, manifest, todo, opts)
        return 0
    print(f"  {opts.executor} executor, {1 if opts.executor == 'debug' else opts.parallel} at once, "
          f"{gpus_per_run(opts)} GPU(s) per run; logs in {sweep.out / 'logs'}", flush=True)
    t0 = time.time()
    before = signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a budget's timeout: stop the jobs as Ctrl-C does
    try:
        failed = run_local(sweep, manifest, todo, opts)
    except KeyboardInterrupt:
        print(f"ltsam sweep: interrupted; `ltsam sweep {sweep.source}` resumes the unfinished runs", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, before)
    print(f"ltsam sweep {sweep.name}: {len(todo) - len(failed)} of {len(todo)} runs finished in "
          f"{time.time() - t0:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + f"; `ltsam report {sweep.out}` summarises them", flush=True)
    return 3 if failed else 0
