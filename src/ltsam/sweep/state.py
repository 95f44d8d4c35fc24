"""Where a sweep stands: each run's state, read from its run folder, and the sweep folder's manifest.

The run folder is the truth: a ``final.json`` recording all epochs = done (:func:`ltsam.runs.run_finished`; a
``--stop-after`` run's final.json is not), else ``last.pt`` = interrupted (resumable),
neither = not started (or stopped in its first epoch: started again). The manifest
(``SWEEP/manifest.json``) records, per run, its configuration hash, its settings, the last known state and
the job that ran it, so a person (or ``ltsam report``) can read the sweep without the grid file. Each run's
settings are also ``SWEEP/settings/<run>.json``: the file its ``ltsam train --config`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ltsam.errors import UserError
from ltsam.io import read_json, write_json
from ltsam.run.files import CONFIG_NAME, LAST, METRICS_NAME
from ltsam.runs import run_finished
from ltsam.sweep.grid import VOLATILE, JobSpec, RunSpec, Sweep, config_hash

MANIFEST = "manifest.json"
SETTINGS_DIR = "settings"
PACKS_DIR = "packs"
DONE, INTERRUPTED, PENDING = "done", "interrupted", "pending"


def runs_dir(sweep: Sweep) -> Path:
    """The folder that holds every run folder of the sweep (a pack job's ``--out``)."""
    return sweep.out.absolute() / "runs"  # absolute: a job may start in another folder


def run_dir(sweep: Sweep, run: RunSpec) -> Path:
    return runs_dir(sweep) / run.name


def settings_file(sweep: Sweep, run: RunSpec) -> Path:
    """The run's settings as data: the ``--config`` file of its ``ltsam train``."""
    return sweep.out.absolute() / SETTINGS_DIR / f"{run.name}.json"


def job_file(sweep: Sweep, job: JobSpec) -> Path:
    """What a job's ``ltsam train`` reads: its run's settings file, or a pack's members file (``--members``)."""
    if not job.packed:
        return settings_file(sweep, job.runs[0])
    return sweep.out.absolute() / PACKS_DIR / f"{job.name}.json"


def write_settings(sweep: Sweep) -> None:
    """Every run's settings file and every pack's members file (atomically), before any job starts."""
    from ltsam.pack.folders import write_members

    for run in sweep.runs:
        write_json(settings_file(sweep, run), run.settings)
    for job in sweep.jobs:
        if job.packed:
            write_members(job_file(sweep, job), [(settings_file(sweep, r), run_dir(sweep, r)) for r in job.runs])


def folder_state(path: Path) -> str:
    """done, interrupted or pending, from what the run folder holds."""
    if run_finished(path):
        return DONE
    if (path / LAST).is_file():
        return INTERRUPTED
    return PENDING


def epochs_done(path: Path) -> int:
    metrics = path / METRICS_NAME
    return sum(1 for ln in metrics.read_text().splitlines() if ln.strip()) if metrics.is_file() else 0


def check_folders(sweep: Sweep) -> None:
    """Refuse a sweep whose run folders hold another configuration under the same run name (the grid
    changed, e.g. its base epochs): one line naming the run, the settings that differ and the fix."""
    for run in sweep.runs:
        path = run_dir(sweep, run) / CONFIG_NAME
        if not run.checked or not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            continue  # a damaged config.json of a run that never finished an epoch: it starts again
        if config_hash(saved) == run.config_hash:
            continue
        keys = sorted(k for k in set(saved) | set(run.resolved)
                      if k not in VOLATILE and saved.get(k) != run.resolved.get(k))
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {run.resolved.get(k)!r}" for k in keys[:4])
        raise UserError(f"run {run.name}: {path.parent} holds another configuration ({diff}); delete that "
                        f"folder, or give the sweep another --out")


class Manifest:
    """``SWEEP/manifest.json``: run -> config hash -> state (and its settings, job and log)."""

    def __init__(self, sweep: Sweep):
        self.sweep, self.path = sweep, sweep.out / MANIFEST
        old = read_json(self.path) if self.path.is_file() else {}
        self.runs: dict[str, dict[str, Any]] = dict(old.get("runs", {})) if isinstance(old, dict) else {}
        for run in sweep.runs:
            entry = self.runs.setdefault(run.name, {})
            entry.update(config=run.config, point=run.point, seed=run.seed, hash=run.config_hash,
                         settings=run.settings,
                         folder=str(Path("runs") / run.name))
            entry.setdefault("state", folder_state(run_dir(sweep, run)))

    def refresh(self) -> dict[str, str]:
        """Every run's state from its folder (a job's 'running'/'failed'/'submitted' kept where the folder
        does not say done or interrupted)."""
        for run in self.sweep.runs:
            entry = self.runs[run.name]
            state = folder_state(run_dir(self.sweep, run))
            if state != PENDING or entry.get("state") not in ("running", "submitted", "failed"):
                entry["state"] = state
            if state == INTERRUPTED:
                entry["epochs_done"] = epochs_done(run_dir(self.sweep, run))
        return {name: e["state"] for name, e in self.runs.items()}

    def mark(self, name: str, state: str, **info: Any) -> None:
        self.runs[name].update(state=state, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        self.save()

    def save(self) -> None:
        write_json(self.path, {"name": self.sweep.name, "grid": str(self.sweep.source),
                               "runs": {r.name: self.runs[r.name] for r in self.sweep.runs}
                               | {k: v for k, v in self.runs.items() if k not in {r.name for r in self.sweep.runs}}})
