"""Sweeps: a YAML grid of configurations x seeds run through submitit (locally or as SLURM job arrays)."""

from ltsam.sweep.grid import RunSpec, Sweep, config_hash, load_sweep
from ltsam.sweep.state import Manifest, folder_state

__all__ = ["Manifest", "RunSpec", "Sweep", "config_hash", "folder_state", "load_sweep"]
