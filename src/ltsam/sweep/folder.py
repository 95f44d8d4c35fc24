"""A sweep folder: the same rules as a run folder. Never the working folder, one above it, home or the root;
a folder of someone else's (non-empty, without ltsam's ``.ltsam-sweep`` marker) is refused and left untouched;
one ``ltsam sweep`` at a time holds it (a flock on ``.ltsam-lock``, a file ltsam owns)."""

from __future__ import annotations

from pathlib import Path

from ltsam.errors import UserError
from ltsam.io import write_text
from ltsam.runs import RunLock, refuse_dangerous

SWEEP_MARKER = ".ltsam-sweep"  # written first into every sweep folder: what makes a folder ltsam's sweep
SWEEP_FORMAT = "ltsam-sweep-v1"


def is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` carries ltsam's sweep marker."""
    try:
        return (path / SWEEP_MARKER).read_text().startswith("ltsam-sweep-v")
    except (OSError, UnicodeDecodeError):
        return False


def check_sweep_dir(path: Path) -> None:
    """Refuse a folder a sweep must not write into; reads only (a dry run calls it too)."""
    refuse_dangerous(path, "a sweep", "runs/sweeps/NAME")
    if path.is_symlink() and not path.is_dir():
        raise UserError(f"--out {path} is a broken symbolic link; choose a folder name")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; a sweep needs a folder, choose another --out")
    if path.is_dir() and not is_sweep_dir(path) and any(path.iterdir()):
        raise UserError(f"--out {path} is not empty and is not an ltsam sweep folder (no {SWEEP_MARKER} marker); "
                        f"refusing to touch it — choose another --out (a sweep folder of an older ltsam: "
                        f"`echo {SWEEP_FORMAT} > {path / SWEEP_MARKER}` adopts it)")


def open_sweep_dir(path: Path) -> RunLock:
    """Create (or reopen) the sweep folder, mark it as ltsam's and lock it for this process's life: a second
    ``ltsam sweep`` of the same folder (which would train the same run folders twice) stops with one line."""
    check_sweep_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create the sweep folder ({exc.strerror}); choose a writable "
                        f"location") from None
    if not is_sweep_dir(path):
        write_text(path / SWEEP_MARKER, f"{SWEEP_FORMAT}\n")
    return RunLock(path, in_use=f"another `ltsam sweep` ({{who}}) is running the sweep in {path}; wait for it, or "
                                f"stop it first")
