"""Run folders: creating them safely, and rebuilding a trained model and its data from one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from torch import nn

from ltsam.config import TrainConfig, validate
from ltsam.distributed import resolve_device
from ltsam.errors import UserError
from ltsam.extensions import require_plugins
from ltsam.io import copy_atomic, load_checkpoint, read_json, write_text
from ltsam.methods import METHODS
from ltsam.run.files import (  # noqa: F401  (re-exported: callers import these from here)
    BEST,
    BEST_VAL,
    CHECKPOINTS,
    CONFIG_NAME,
    FIGURES,
    FINAL_NAME,
    HESSIAN_DIR,
    LAST,
    LOCK_NAME,
    METRICS_NAME,
    OWN_FILES,
    OWN_FOLDERS,
    RUN_MARKER,
    SWEEP_NAME,
    checkpoint_file,
)
from ltsam.run.records import MetricsLog

RUN_FORMAT = "ltsam-run-v1"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # io._atomic's (and mkstemp's) names


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` carries ltsam's run marker (a folder holding a config.json is not enough)."""
    try:
        return (path / RUN_MARKER).read_text().startswith("ltsam-run-v")
    except (OSError, UnicodeDecodeError):
        return False


def new_marker() -> str:
    """The marker's text: the format, then a run id (random, 16 hex digits) that a copy of the folder keeps,
    so that ``ltsam report`` counts a copied run once."""
    return f"{RUN_FORMAT}\nid {secrets.token_hex(8)}\n"


def run_id(path: Path) -> str | None:
    """The run id the folder's marker records (``None`` for a folder without one, or one marked before ids)."""
    try:
        lines = (path / RUN_MARKER).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    ids = [ln[3:].strip() for ln in lines[1:] if ln.startswith("id ")]
    return ids[0] if ids and ids[0] else None


def run_finished(path: Path) -> bool:
    """Whether the run in ``path`` trained all its epochs: its ``final.json`` exists, reads, and records
    ``epochs_done >= epochs`` (a ``--stop-after`` run writes a final.json too, and is not finished)."""
    try:
        final = json.loads((path / FINAL_NAME).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(final, dict):
        return False
    done, total = final.get("epochs_done"), final.get("epochs")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (done, total)):
        return False
    return cast(int, done) >= cast(int, total)


def _is_orphan(entry: Path) -> bool:
    """A temporary file of one of ltsam's atomic writes (left behind only by a killed process)."""
    match = _TEMPORARY.match(entry.name)
    return match is not None and match["name"] in OWN_FILES and not entry.is_dir()


def _is_own(entry: Path) -> bool:
    if entry.name in OWN_FILES:
        return not entry.is_dir() or entry.is_symlink()
    return entry.name in OWN_FOLDERS or _is_orphan(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def remove_orphans(run_dir: Path) -> None:
    """Delete temporary files a killed process left behind (``.last.pt.XXXXXXXX.tmp`` ...).
    Call only while holding the folder's lock: a live run's temporary file would go too."""
    for entry in run_dir.iterdir():
        if _is_orphan(entry):
            entry.unlink(missing_ok=True)


def refuse_dangerous(path: Path, what: str = "a run", example: str = "runs/NAME") -> None:
    """A run (or a sweep) needs a folder of its own: never the working folder, one above it, home or the root."""
    real, cwd = Path(os.path.realpath(path)), Path(os.path.realpath(Path.cwd()))
    home = Path(os.path.realpath(Path.home()))
    if real == cwd or real in cwd.parents or real == home or real == Path(real.anchor):
        where = ("the working folder" if real == cwd else "the root folder" if real == Path(real.anchor)
                else "your home folder" if real == home else "a folder above the working folder")
        raise UserError(f"--out {path} is {where}; {what} needs a folder of its own, e.g. --out {example}")


def refuse_overlap(out: Path, keep: Path, what: str) -> None:
    """A new run's folder ``out`` must not be ``keep`` (a folder or file the run reads, e.g. a stage's
    parent run), lie inside it, or contain it: replacing ``out`` would destroy what it was made from."""
    real_out, real_keep = Path(os.path.realpath(out)), Path(os.path.realpath(keep))
    if real_out == real_keep or real_keep in real_out.parents or real_out in real_keep.parents:
        how = ("is" if real_out == real_keep else "lies inside" if real_keep in real_out.parents else "contains")
        raise UserError(f"--out {out} {how} {what} {keep}; a new run needs a folder of its own beside it, "
                        f"e.g. --out {real_keep.parent / (real_keep.stem + '_stage')}")


def _names(entries: list[Path], most: int = 5) -> str:
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def epochs_left(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds of finished epochs besides ``last.pt``: metrics.jsonl's records, best.pt,
    best_val.pt, final.json, figures, a stage's sweep.json, Hessian results. Empty only for a run that never
    finished an epoch (its config.json, marker, lock and the TensorBoard file opened at its start are no
    results): only such a folder may be started again from its config.json, or replaced without --overwrite."""
    found = []
    records = MetricsLog(run_dir).whole_records()
    if records:
        found.append(f"{METRICS_NAME} ({records} epoch{'' if records == 1 else 's'})")
    found += [name for name in (BEST, BEST_VAL, FINAL_NAME, SWEEP_NAME, *FIGURES) if (run_dir / name).exists()]
    if (run_dir / HESSIAN_DIR).is_dir():
        found.append(HESSIAN_DIR + "/")
    return found


def refuse_lost_checkpoint(run_dir: Path, left: list[str], what: str, then: str,
                           restart: str = "--overwrite on a new run into its folder starts it again (deleting "
                                          "these)") -> None:
    """A run that finished epochs but lost its ``last.pt`` cannot continue; say what is left and what the user
    can do (``then``: the command that continues it, or its pack, once a last.pt is back; ``restart``: how to
    start it again instead), touching nothing."""
    best = (f"to continue from its best epoch, copy {run_dir / BEST} to {run_dir / LAST}, then `{then}`; "
            if BEST in left else "")
    raise UserError(f"{what}: {run_dir} has finished epochs ({', '.join(left)}) but no {LAST} to continue from; "
                    f"nothing was changed — {best}`ltsam eval {run_dir}` still reads what it holds, and {restart}")


_continue: list[str] = []


def set_continue_command(command: str) -> None:
    """The command that continues what this process trains, for the line a signal or a full disk ends it with:
    a pack's ``ltsam train --resume OUT`` rather than one member's folder (resuming a member alone splits it)."""
    _continue[:] = [command]


def continue_command() -> str | None:
    """:func:`set_continue_command`'s command, else ``ltsam train --resume RUN`` for the folder this process
    trains into, else ``None``."""
    if _continue:
        return _continue[0]
    run = held_run_dir()
    return f"ltsam train --resume {run}" if run is not None else None


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.ltsam-lock`` for as long as a process trains into the folder.

    The OS drops it when the process ends, however it ends (even SIGKILL), so a lock is never stale.
    The file holds the holder's pid, so that the refused process can name it.
    """

    def __init__(self, run_dir: Path, in_use: str | None = None):
        """``in_use``: the refusal's message, with ``{who}`` for the holder (default: a run folder's)."""
        import fcntl  # POSIX (Linux, macOS); imported here so that eval and hessian need it not

        self.run_dir = run_dir
        path = run_dir / LOCK_NAME
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise UserError((in_use or f"run folder {run_dir} is in use by another ltsam run ({{who}}); wait for "
                                       f"it to finish or stop it, or choose another --out").format(who=who)) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = -1


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process that holds ``run_dir``'s lock (0 when its file names none), or ``None`` when no
    process holds it. The lock file is opened as it is, never created or truncated; the probe's own lock is
    released at once."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file: nobody has ever trained here, or it is not ours to open
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(holder) if holder.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


_held: list[RunLock] = []


def lock_run_dir(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` for the rest of this ``ltsam train`` (released by :func:`release_run_locks`)."""
    lock = RunLock(run_dir)
    _held.append(lock)
    return lock


def held_run_dir() -> Path | None:
    """The run folder this process trains into (rank 0; ``None`` on other ranks or before it is locked)."""
    return _held[-1].run_dir if _held else None


def _missing(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet (what ``mkdir -p`` would make)."""
    chain = []
    while not path.exists() and path != path.parent:
        chain.append(path)
        path = path.parent
    return chain


def lock_run_dirs(dirs: Sequence[Path]) -> None:
    """Create (where new) and lock every folder of ``dirs`` (a pack's members), all or none: one in use refuses
    the lot, and the folders made for it are removed again, so a pack that loses its folders to another one
    leaves nothing behind."""
    made = sorted({p for d in dirs for p in _missing(d)}, key=lambda p: len(p.parts), reverse=True)
    locks: list[RunLock] = []
    try:
        for run_dir in dirs:
            _make_folder(run_dir)
            locks.append(lock_run_dir(run_dir))
    except BaseException:
        for lock in locks:
            _held.remove(lock)
            lock.release()
        for path in made:
            (path / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def release_run_locks() -> None:
    while _held:
        _held.pop().release()
    _continue.clear()


def _replaceable(path: Path, overwrite: bool) -> list[Path]:
    """The entries of an existing ``path`` that a new run would replace; refuses what it must not touch. A run
    that never finished an epoch (no last.pt, nothing :func:`epochs_left` counts) is replaced without
    ``overwrite``: nothing of it is lost, and its command may be corrected."""
    entries = [e for e in path.iterdir() if e.name != LOCK_NAME]
    if all(_is_orphan(e) for e in entries) and (not entries or (path / LOCK_NAME).exists()):
        return entries  # empty, or a start killed before its marker was written
    if not is_run_dir(path):
        raise UserError(f"{path} is not empty and is not an ltsam run folder (no {RUN_MARKER} marker); "
                        f"refusing to touch it — choose another --out")
    if not overwrite and ((path / LAST).is_file() or epochs_left(path)):
        left = epochs_left(path)
        if not (path / LAST).is_file():
            raise UserError(f"run folder {path} holds a run with finished epochs ({', '.join(left)}) but no "
                            f"{LAST}; pass --overwrite to replace it (deleting them), or choose another --out")
        raise UserError(f"run folder {path} already exists; pass --overwrite to replace it, "
                        f"--resume {path} to continue it, or choose another --out")
    foreign = [e for e in entries if not _is_own(e)]
    if foreign:
        raise UserError(f"run folder {path} also holds files ltsam did not write ({_names(foreign)}); "
                        f"--overwrite removes only a run's own files — move those away or choose another --out")
    return entries


def refuse_unreplaceable(path: Path, overwrite: bool) -> None:
    """What a new run into the existing folder ``path`` refuses (:func:`prepare_run_dir`'s checks of its
    entries), touching nothing; for a pack's members, checked for all of them before any is replaced."""
    _replaceable(path, overwrite)


def never_finished_an_epoch(path: Path) -> bool:
    """An ltsam run folder whose run stopped before its first checkpoint, with nothing :func:`epochs_left`
    counts."""
    return is_run_dir(path) and not (path / LAST).is_file() and not epochs_left(path)


def _make_folder(path: Path) -> None:
    """``mkdir -p``, with a path under a file or on a read-only disk said in one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        raise UserError(f"--out {path}: {blocker} is a file, so no folder can be made there; choose another "
                        f"--out") from None
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create the folder ({exc.strerror}); choose a writable "
                        f"location") from None


def prepare_run_dir(path: Path, overwrite: bool) -> None:
    """Create and lock the run folder ``path`` and mark it as ltsam's.

    An existing non-empty folder must be an ltsam run (marker) holding only ltsam's files, and needs
    ``overwrite`` unless its run never finished an epoch; those files are then removed, nothing else.
    Refused before anything is touched: the working folder, a folder above it, home, the root.
    """
    check_run_dir(path, overwrite)
    _make_folder(path)
    lock = lock_run_dir(path)  # an ltsam run in use is refused here, naming its pid
    try:
        fill_run_dir(path, overwrite)
    except BaseException:
        _held.remove(lock)
        lock.release()
        raise


def check_run_dir(path: Path, overwrite: bool) -> None:
    """What :func:`prepare_run_dir` refuses before it creates or locks anything."""
    refuse_dangerous(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; choose a folder name")
    if path.is_symlink() and overwrite:
        raise UserError(f"--out {path} is a symbolic link; to replace a run, pass the folder it points to "
                        f"({os.path.realpath(path)})")
    if path.is_dir() and lock_holder(path) is None:  # one in use: its lock names the holder
        _replaceable(path, overwrite)  # a foreign folder before a lock file is made in it, a finished run ...


def fill_run_dir(path: Path, overwrite: bool) -> None:
    """The locked folder ``path`` emptied of a replaced run's files (checked again: no other run can change it
    now) and marked as a new run's."""
    restart = not overwrite and never_finished_an_epoch(path)
    for entry in _replaceable(path, overwrite):
        _remove(entry)
    if restart:
        print(f"ltsam: {path} held a run stopped before its first checkpoint; starting anew in its place",
              flush=True)
    write_text(path / RUN_MARKER, new_marker())


def check_resumable(run_dir: Path, then: str | None = None) -> bool:
    """Check ``run_dir`` for ``--resume``, touching nothing: ``True`` when it has a ``last.pt`` to continue,
    ``False`` when its run never finished an epoch (it starts again from config.json). A run with finished
    epochs but no last.pt is refused, saying what is left (``then``: the command that continues it)."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such folder; pass the folder of an ltsam run")
    if (run_dir / CONFIG_NAME).is_file():
        _refuse_stage_run(run_dir, read_json(run_dir / CONFIG_NAME))
    if (run_dir / LAST).is_file():
        return True
    if not (is_run_dir(run_dir) and (run_dir / CONFIG_NAME).is_file()):
        raise UserError(f"--resume {run_dir}: no last.pt there; pass the folder of an ltsam run")
    left = epochs_left(run_dir)
    if left:
        refuse_lost_checkpoint(run_dir, left, f"--resume {run_dir}", then or f"ltsam train --resume {run_dir}")
    return False


def clear_for_restart(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch left (its config.json, marker and lock stay), checked
    again under the folder's lock. Call only while holding it."""
    check_resumable(run_dir)
    for entry in run_dir.iterdir():
        if _is_own(entry) and entry.name not in (RUN_MARKER, LOCK_NAME, CONFIG_NAME):
            _remove(entry)


def open_for_resume(run_dir: Path, owner: bool = True) -> bool:
    """Check ``run_dir`` for ``--resume`` (:func:`check_resumable`); ``True`` when it has a ``last.pt`` to
    continue, ``False`` when its run never finished an epoch (it starts again from config.json). The ``owner``
    (rank 0 under torchrun) locks the folder and clears what a killed process left: temporary files, and the
    outputs of a run that never finished an epoch."""
    has_checkpoint = check_resumable(run_dir)
    if not owner:
        return has_checkpoint
    lock_run_dir(run_dir)
    remove_orphans(run_dir)
    if not has_checkpoint:
        clear_for_restart(run_dir)
    return has_checkpoint


def repair_best(run_dir: Path, epochs_done: int, best_epoch: int | None, name: str = BEST) -> None:
    """Make ``name`` (``best.pt``, ``best_val.pt``) the checkpoint ``last.pt`` records as best. It is written
    just after ``last.pt`` in the same epoch, so a kill or a full disk between the two leaves it stale exactly
    when the last finished epoch was the best; then ``last.pt`` holds the same payload, and is copied over it."""
    if best_epoch is not None and best_epoch == epochs_done - 1:
        copy_atomic(run_dir / LAST, run_dir / name)


def checkpoint_path(target: str | Path, which: str = "best") -> Path:
    """A run folder (its ``best.pt``, ``last.pt`` or ``best_val.pt``) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        path = target / checkpoint_file(which)
        if not path.is_file():
            if which == "best_val" and _is_stage_folder(target):
                raise UserError(f"{target} is a second-stage run (ltsam finetune), which keeps best.pt and last.pt "
                                f"only; use --which best or last")
            if which == "best_val" and (target / LAST).is_file():
                raise UserError(f"{target} has no best_val.pt: the run had no validation split (train with "
                                f"--val-per-class N); use --which best or last")
            raise UserError(f"{target} has no {which}.pt; is it an ltsam run folder?")
        return path
    if not target.exists():
        raise UserError(f"{target} does not exist; pass an ltsam run folder or checkpoint file")
    return target


def load_trained(target: str | Path, which: str = "best", device: str = "cpu"
                 ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """(model in eval mode, its training config, the checkpoint) from a run folder or .pt file."""
    ckpt = load_checkpoint(checkpoint_path(target, which))
    cfg = config_from_dict(ckpt["config"])
    validate(cfg)
    meta = ckpt["model_meta"]
    model = model_from_meta(meta)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not fit a {meta['arch']} model: "
                        f"{str(exc).splitlines()[0]}") from None
    model.to(resolve_device(device)).eval()
    return model, cfg, ckpt


def is_stage_config(values: Any) -> bool:
    """Whether a run folder's config.json is an ``ltsam finetune`` run's (it names a stage and a parent)."""
    return isinstance(values, dict) and "stage" in values and "parent" in values


def _is_stage_folder(run_dir: Path) -> bool:
    """Whether ``run_dir``'s config.json is a second stage's."""
    try:
        return is_stage_config(json.loads((run_dir / CONFIG_NAME).read_text()))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _refuse_stage_run(run_dir: Path, values: Any) -> None:
    """``ltsam train --resume`` on a folder of ``ltsam finetune``."""
    if is_stage_config(values):
        raise UserError(f"{run_dir} is a second-stage run (ltsam finetune), not a training run; continue it with "
                        f"`ltsam finetune --resume {run_dir}`")


def read_run_config(run_dir: Path) -> TrainConfig:
    """The saved configuration of a training run (``open_for_resume`` has already refused a stage run's)."""
    cfg = config_from_dict(read_json(run_dir / CONFIG_NAME))
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A saved configuration. The plugins its run used must already be loaded (``--plugin`` on this
    command line, or an installed entry point): nothing named in a run folder is imported."""
    if not isinstance(values, dict):
        raise UserError("a run configuration must be a JSON object of settings; the file is damaged")
    plugins = values.get("plugins")
    if plugins is not None and not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
        raise UserError("a run configuration's plugins must be a list of module names; the file is damaged")
    require_plugins(plugins or [])
    return TrainConfig.from_dict(values)


def model_from_meta(meta: dict[str, Any], weights: bool = False) -> nn.Module:
    """The architecture a checkpoint's ``model_meta`` describes (a method's models carry its heads);
    ``weights``: with the pretrained weights it names (a new run; a checkpoint brings its own)."""
    return METHODS.get(meta.get("method", "erm")).build_model(meta, weights=weights)
