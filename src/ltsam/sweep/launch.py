"""Running a sweep's runs through submitit: on this machine (its LocalExecutor, several at once, sharing
the GPUs), one after another from this process (its DebugExecutor), or as one SLURM job array (its SlurmExecutor).

Every run is the same job, :class:`TrainJob`: it starts ``ltsam train --config SETTINGS`` (the run's settings
as data, ``SWEEP/settings/<run>.json``) into the run's folder, resumes it
from ``last.pt`` when the folder holds one, and does nothing when the run is done. It is checkpointable:
on a SLURM time limit or pre-emption submitit calls :meth:`TrainJob.checkpoint` and requeues the job,
which then resumes from the last finished epoch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from ltsam.errors import UserError
from ltsam.launcher import ltsam_command, submitit_python, torchrun_command
from ltsam.run.files import FINAL_NAME, LAST
from ltsam.runs import lock_holder, run_finished
from ltsam.sweep.grid import JobSpec, RunSpec, Sweep
from ltsam.sweep.state import Manifest, folder_state, job_file, run_dir

# SLURM job states in which a job still owns its run folder (a re-run of the sweep leaves it alone).
QUEUED = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
MAX_REQUEUES = 30  # time limits a run may hit, each followed by a requeue that resumes it


def plugin_args(plugins: Sequence[str]) -> list[str]:
    """``--plugin MODULE`` for each of ``plugins``: a job imports the grid's plugins because its command line names
    them (``ltsam train`` never imports a module its settings file or a run folder names)."""
    return [a for m in plugins for a in ("--plugin", m)]


def start_args(run_dir: str | Path, settings: str | Path, plugins: Sequence[str]) -> list[str]:
    """``ltsam`` arguments that start a run afresh from its settings file (replacing a folder whose run never
    finished an epoch), with the ``--plugin`` modules its settings name."""
    return ["train", "--config", str(settings), *plugin_args(plugins), "--out", str(run_dir), "--overwrite",
            "--no-progress"]


def resume_args(run_dir: str | Path, plugins: Sequence[str]) -> list[str]:
    """``ltsam`` arguments that resume a run from its ``last.pt``, with the run's own ``--plugin`` modules (a
    resumed run imports only the plugins its settings name, never those its config.json records)."""
    return ["train", "--resume", str(run_dir), *plugin_args(plugins), "--no-progress"]


def train_args(run_dir: str | Path, settings: str | Path, plugins: Sequence[str]) -> list[str]:
    """``ltsam`` arguments for a run: resume it if the folder holds a ``last.pt``, else start it."""
    if (Path(run_dir) / LAST).is_file():
        return resume_args(run_dir, plugins)
    return start_args(run_dir, settings, plugins)


def pack_args(members: str | Path, plugins: Sequence[str], runs: str | Path) -> list[str]:
    """``ltsam`` arguments for a pack: its members file (each member resumed, started or left alone by it), the
    plugins of all its members, and ``--out RUNS``: the folder that holds every run folder the file names."""
    return ["train", "--members", str(members), "--out", str(runs), *plugin_args(plugins), "--no-progress"]


def job_args(run_dirs: Sequence[str | Path], settings: str | Path, plugins: Sequence[str]) -> list[str]:
    """``ltsam`` arguments for a job: one run's (:func:`train_args`) or a pack's (:func:`pack_args`, whose
    ``--out`` is the folder holding its run folders: a sweep's ``runs/``)."""
    if len(run_dirs) == 1:
        return train_args(run_dirs[0], settings, plugins)
    return pack_args(settings, plugins, os.path.commonpath([str(Path(d).absolute()) for d in run_dirs]))


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job (pickled by submitit and called in the job's process).

    The training runs in a child process (``torchrun`` for several GPUs) that the job waits for, so a
    pre-emption signal lands in the wait, never in the middle of a checkpoint write: submitit then calls
    :meth:`checkpoint`, which stops the child (its last.pt stays whole: checkpoints are written atomically)
    and requeues the job.
    """

    def __init__(self, driver: int | None = None) -> None:
        """``driver``: the pid of the ``ltsam sweep`` that started the job (local executor); the job and its
        training end when it ends, however it ends (SIGKILL included)."""
        self.driver = driver
        self._proc: subprocess.Popen | None = None
        self._orphaned = False

    def __call__(self, run_dirs: list[str], settings: str, plugins: list[str], gpus: int = 1) -> str:
        """Train ``run_dirs`` (one run, or a pack: ``settings`` is then its members file)."""
        if self.driver is not None and not _watch_driver(self.driver, self._driver_ended):
            raise RuntimeError(f"the `ltsam sweep` that started this job (pid {self.driver}) has ended")
        if all(run_finished(Path(d)) for d in run_dirs):
            return "done already"
        args = job_args(run_dirs, settings, plugins)
        # as the installed `ltsam` starts: the working folder's files (a tqdm.py) are never imported
        # torchrun: one process per GPU (a pack trains in one process)
        cmd = torchrun_command(args, gpus) if gpus > 1 and len(run_dirs) == 1 else ltsam_command(args)
        self._proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        if self._orphaned:  # the driver ended while the training started
            self._driver_ended()
        try:
            code = self._proc.wait()
        finally:
            self._stop()
        if code != 0:
            raise RuntimeError(f"`ltsam {' '.join(args)}` exited with status {code}")
        return "done"

    def _driver_ended(self) -> None:
        """From the watcher thread: the driver is gone, so stop the training (SIGTERM: it stops cleanly, its
        last.pt kept, and a rerun of the sweep resumes it)."""
        self._orphaned = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop the training and requeue the same job; it resumes from the last ``last.pt``.

        Called from submitit's signal handler while ``__call__`` waits on the child, so it only signals the
        child: waiting here would wait on the lock the interrupted wait holds. The requeue's exit unwinds
        ``__call__``, whose ``finally`` waits for the child to end.
        """
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        return submitit.helpers.DelayedSubmission(TrainJob(self.driver), *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"driver": self.driver, "_proc": None, "_orphaned": False}


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the job process dies (a job killed by its
    controller or by SLURM must not leave its training behind). Elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), ``None`` when it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid


def _watch_driver(driver: int, on_end: Callable[[], None], every_s: float = 0.5) -> bool:
    """In the job process, whose parent is submitit's job controller, itself a child of the driver: ask Linux
    for SIGKILL when the controller dies (submitit's job only logs SIGTERM), and call ``on_end`` from a thread
    once the controller's parent is no longer the driver (the driver ended: the controller was re-parented).
    ``False`` when the driver has already ended. Elsewhere than Linux nothing is watched."""
    if not sys.platform.startswith("linux"):
        return True
    import ctypes
    import threading

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    controller = os.getppid()
    if _parent_of(controller) != driver:  # checked after the prctl: a parent that died before it is seen here
        return False

    def watch() -> None:
        while _parent_of(controller) == driver:
            time.sleep(every_s)
        on_end()

    threading.Thread(target=watch, name="ltsam-driver-watch", daemon=True).start()
    return True


@dataclass(kw_only=True)
class LaunchOptions:
    executor: str = "local"  # local, debug or slurm
    parallel: int = 1
    gpus_per_run: int | None = None  # None: 1 where CUDA is present, else 0
    timeout_min: int | None = None  # None: 3 days per job (SLURM: --time; requeued and resumed past it)
    partition: str | None = None
    array_parallelism: int | None = None
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    slurm_args: dict[str, str] = field(default_factory=dict)
    resubmit: bool = False
    poll_s: float = 0.5


def gpus_per_run(opts: LaunchOptions) -> int:
    if opts.gpus_per_run is not None:
        return opts.gpus_per_run
    if opts.executor == "slurm":
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 0


def check_executor(opts: LaunchOptions) -> None:
    """Refuse what the executor cannot do here, before anything is written: more GPUs per run than this machine
    has (local), or SLURM without its ``srun`` (slurm)."""
    if opts.executor == "local":
        gpus = gpus_per_run(opts)
        n_gpus = _device_count() if gpus else 0
        if gpus > n_gpus:
            raise UserError(f"--gpus-per-run {gpus}: this machine has {n_gpus} GPU(s); lower it (0 runs on the "
                            f"CPU)")
    elif opts.executor == "slurm" and not submitit.SlurmExecutor.affinity() > 0:
        raise UserError("--executor slurm: no `srun` on PATH; run `ltsam sweep` on the cluster, or write a plain "
                        "script with --emit-sbatch FILE")


def run_local(sweep: Sweep, manifest: Manifest, todo: list[RunSpec], opts: LaunchOptions,
              say: Callable[[str], None] = print) -> list[str]:
    """Run ``todo`` on this machine, ``opts.parallel`` at once; returns the names of the runs that failed.

    With GPUs, concurrent runs take turns over them (slot k of N gets GPUs k*G .. k*G+G-1, modulo the
    GPU count): one GPU is shared by all; 8 GPUs and 8 at once give each run its own. Stopped (Ctrl-C,
    SIGTERM, a budget's timeout), it cancels its jobs; their runs keep their last.pt and resume next time.
    """
    gpus = gpus_per_run(opts)
    logs = sweep.out.absolute() / "logs"
    if opts.executor == "debug":
        executor: submitit.Executor = submitit.DebugExecutor(folder=logs)
    else:
        # its jobs start as the installed `ltsam` does: no file of the working folder is imported
        executor = submitit.LocalExecutor(folder=logs, max_num_timeout=MAX_REQUEUES, python=submitit_python())
        executor.update_parameters(timeout_min=opts.timeout_min or 3 * 24 * 60, gpus_per_node=gpus)
    n_gpus = _device_count() if gpus else 0
    if opts.executor == "local":
        check_executor(opts)
    parallel = 1 if opts.executor == "debug" else opts.parallel
    queue: list[JobSpec] = sweep.jobs_of(todo)
    active: dict[Any, tuple[JobSpec, int]] = {}  # submitit job -> (what it trains, slot)
    failed: list[str] = []
    free = list(range(parallel))
    waiting: dict[str, int] = {}  # jobs still trained by a process of an earlier sweep -> its pid (said once)
    t0 = time.time()
    try:
        while queue or active:
            busy = _still_trained(sweep, queue, waiting, say, t0)  # each holds a slot: --parallel counts it
            for unit in [j for j in queue if j.name not in busy and j.name in waiting]:
                pid = waiting.pop(unit.name)
                if all(run_finished(run_dir(sweep, r)) for r in unit.runs):  # that process finished it
                    queue.remove(unit)
                    for run in unit.runs:
                        manifest.mark(run.name, folder_state(run_dir(sweep, run)))
                    say(f"[+{time.time() - t0:.0f}s] done {unit.name} (by pid {pid or '?'})")
            startable = [j for j in queue if j.name not in busy]
            while startable and len(free) > len(busy):
                unit, slot = startable.pop(0), free.pop(0)
                queue.remove(unit)
                if opts.executor == "local" and gpus:
                    executor.update_parameters(visible_gpus=[(slot * gpus + j) % n_gpus for j in range(gpus)])
                active[_start(sweep, manifest, executor, unit, gpus, say, t0=t0,
                              watched=opts.executor == "local")] = (unit, slot)
            for job in [j for j in active if j.done()]:
                unit, slot = active.pop(job)
                free.append(slot)
                _finished(sweep, manifest, unit, job, failed, say, t0=t0)
            if active or queue:
                time.sleep(opts.poll_s)
    except BaseException:
        for job in active:
            job.cancel(check=False)
        raise
    return failed


def _still_trained(sweep: Sweep, queue: list[JobSpec], waiting: dict[str, int], say: Callable[[str], None],
                   t0: float) -> dict[str, int]:
    """The queued jobs with a run folder another process still trains into (a job of an earlier ``ltsam sweep``
    killed before it could stop it), by name -> pid; each is said once, and left to that process."""
    busy = {}
    for unit in queue:
        pids = [p for p in (lock_holder(run_dir(sweep, r)) for r in unit.runs) if p is not None]
        if not pids:
            continue
        busy[unit.name] = pids[0]
        if unit.name not in waiting:
            waiting[unit.name] = pids[0]
            say(f"[+{time.time() - t0:.0f}s] waiting for {unit.name}, still trained by pid {pids[0] or '?'}")
    return busy


def _submit(executor: Any, job: TrainJob, sweep: Sweep, unit: JobSpec, gpus: int) -> Any:
    return executor.submit(job, [str(run_dir(sweep, r)) for r in unit.runs], str(job_file(sweep, unit)),
                           unit.plugins, gpus)


def _start(sweep: Sweep, manifest: Manifest, executor: Any, unit: JobSpec, gpus: int, say: Callable[[str], None], *,
           t0: float, watched: bool = False) -> Any:
    """Submit the unit's job; ``watched``: the job (a process of its own) ends when this process ends."""
    how = "resuming" if any((run_dir(sweep, r) / LAST).is_file() for r in unit.runs) else "starting"
    job = _submit(executor, TrainJob(os.getpid() if watched else None), sweep, unit, gpus)
    for run in unit.runs:
        manifest.mark(run.name, "running", job=str(job.job_id), log=str(job.paths.stdout))
    what = unit.name if not unit.packed else \
        f"{unit.name} ({len(unit.runs)} runs as one pack: {', '.join(r.name for r in unit.runs)})"
    say(f"[+{time.time() - t0:.0f}s] {how} {what} (job {job.job_id})")
    return job


def _finished(sweep: Sweep, manifest: Manifest, unit: JobSpec, job: Any, failed: list[str],
              say: Callable[[str], None], *, t0: float) -> None:
    try:
        job.result()
        error = None
    except Exception as exc:  # the job's own error (its cause: the training's `ltsam: error:` line), with its log
        error = _error_line(job.paths.stderr) or _last_line(str(exc))
    for run in unit.runs:
        state = folder_state(run_dir(sweep, run))
        if error is not None and state != "done":  # a pack's member that finished stays done
            failed.append(run.name)
            manifest.mark(run.name, "failed", error=error)
            say(f"[+{time.time() - t0:.0f}s] FAILED {run.name}: {error}; log {job.paths.stderr}")
            continue
        manifest.mark(run.name, state)
        final = run_dir(sweep, run) / FINAL_NAME
        top1 = ""
        if final.is_file():
            import json

            top1 = f": last-epoch test top-1 {json.loads(final.read_text())['final']['top1']:.2f}"
        say(f"[+{time.time() - t0:.0f}s] {state} {run.name}{top1}")


def submit_slurm(sweep: Sweep, manifest: Manifest, todo: list[RunSpec], opts: LaunchOptions,
                 say: Callable[[str], None] = print) -> list[str]:
    """Submit ``todo`` as one SLURM job array (submitit's SlurmExecutor); returns the job ids."""
    gpus = gpus_per_run(opts)
    try:
        executor = submitit.SlurmExecutor(folder=sweep.out.absolute() / "slurm" / "%j", max_num_timeout=MAX_REQUEUES)
    except RuntimeError as exc:
        raise UserError(f"--executor slurm: {exc} (no `srun` on PATH); run `ltsam sweep` on the cluster, or write "
                        f"a plain script with --emit-sbatch FILE") from None
    params: dict[str, Any] = dict(job_name=f"ltsam-{sweep.name}", time=opts.timeout_min or 24 * 60,
                                  nodes=1, ntasks_per_node=1, signal_delay_s=120,
                                  array_parallelism=opts.array_parallelism or len(todo))
    if opts.partition:
        params["partition"] = opts.partition
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.cpus_per_run:
        params["cpus_per_task"] = opts.cpus_per_run
    if opts.mem_gb:
        params["mem"] = f"{opts.mem_gb:g}GB"
    if opts.slurm_args:
        params["additional_parameters"] = dict(opts.slurm_args)
    try:
        executor.update_parameters(**params)
        with executor.batch():
            units = sweep.jobs_of(todo)
            jobs = [_submit(executor, TrainJob(), sweep, unit, gpus) for unit in units]
    except (ValueError, OSError, subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError) as exc:
        raise UserError(f"--executor slurm: submission failed: {_last_line(str(exc))}") from None
    for unit, job in zip(units, jobs):
        for run in unit.runs:
            manifest.mark(run.name, "submitted", job=str(job.job_id), log=str(job.paths.stdout))
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    packed = f" in {len(jobs)} jobs (packs)" if len(jobs) != len(todo) else ""
    say(f"submitted {len(todo)} runs{packed} as SLURM job array {', '.join(ids)} "
        f"(logs under {sweep.out / 'slurm'}); "
        f"`ltsam sweep {sweep.source}` again later resumes what did not finish, `ltsam report {sweep.out}` "
        f"summarises")
    return [str(j.job_id) for j in jobs]


def still_queued(sweep: Sweep, manifest: Manifest, run: RunSpec) -> str | None:
    """The SLURM state of the run's job if it still holds the run (queued or running), else None."""
    entry = manifest.runs.get(run.name, {})
    if entry.get("state") != "submitted" or not entry.get("job"):
        return None
    try:
        job: submitit.SlurmJob[Any] = submitit.SlurmJob(folder=sweep.out.absolute() / "slurm" / "%j",
                                                        job_id=str(entry["job"]))
        state = str(job.watcher.get_state(job.job_id, mode="force")).split()[0].upper()  # sacct, now
    except Exception:  # no sacct here, or it failed
        state = "UNKNOWN"
    return state if state in QUEUED or state == "UNKNOWN" else None


def _device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _error_line(log: Path) -> str | None:
    """The last ``ltsam: error: ...`` line of a job's log (the training's own one-line cause), if any."""
    try:
        with open(log, errors="replace") as handle:
            lines = [ln.strip() for ln in handle if ln.startswith("ltsam: error:")]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"
