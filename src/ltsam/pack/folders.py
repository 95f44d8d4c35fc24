"""The folder of a pack started by ``ltsam train --seeds``: one ordinary run folder per member
(``OUT/seed0``, ``OUT/seed1``, ...), each member's ``config.json`` naming the pack (``pack``: its folder, size,
the member's index and the members' folders). ``ltsam train --resume OUT`` resumes them as one pack, finding
the members by name inside OUT (wherever OUT now lies); a member's own folder resumes alone like any run.
And the members files of ``ltsam sweep --pack`` (``ltsam train --members FILE --out DIR``): handed data, whose
runs stay inside DIR.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltsam.errors import UserError
from ltsam.io import read_json, write_json
from ltsam.run.files import CONFIG_NAME, DIVERGED_NAME, LAST, RUN_MARKER
from ltsam.runs import (
    check_resumable,
    check_run_dir,
    clear_for_restart,
    epochs_left,
    fill_run_dir,
    is_run_dir,
    lock_run_dirs,
    read_run_config,
    refuse_dangerous,
    refuse_lost_checkpoint,
    refuse_unreplaceable,
    remove_orphans,
    repair_best,
)

if TYPE_CHECKING:
    from ltsam.config import TrainConfig

REPORT_DIR = "report"  # where the mean ± std table of the members goes (``ltsam report OUT``)


def member_name(seed: int) -> str:
    return f"seed{seed}"


def seed_members(cfg: TrainConfig, seeds: Sequence[int], out: Path, one_by_one: bool = False
                 ) -> list[TrainConfig]:
    """One configuration per seed, each naming its folder and its pack (``one_by_one``: runs that do not pack,
    trained one after another in the pack's folder, say so)."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))} names a seed twice; give each seed once")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise UserError(f"--seeds {bad[0]}: a seed must lie between 0 and {2**32 - 1} (NumPy's seeds); "
                        f"give seeds in that range")
    dirs = [out / member_name(s) for s in seeds]
    members = []
    for i, (seed, run_dir) in enumerate(zip(seeds, dirs)):
        member = dataclasses.replace(cfg, options=dict(cfg.options))
        member.seed, member.out = int(seed), str(run_dir)
        member.compile = bool(cfg.compile)  # auto settles to off: a pack runs eagerly (--compile is refused)
        member.pack = {"folder": str(out), "size": len(seeds), "index": i, "members": [str(d) for d in dirs]}
        if one_by_one:
            member.pack["one_by_one"] = True
        members.append(member)
    return members


def prepare_pack_dir(out: Path, members: Sequence[TrainConfig], overwrite: bool) -> list[Path]:
    """Create ``out`` and every member's run folder (locked, marked, config.json written). ``out`` may be new,
    empty, or hold only ltsam run folders (and an earlier report); anything else is someone's and refused."""
    refuse_dangerous(out, "a pack of runs", "runs/NAME")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; --seeds needs a folder for its runs, choose another --out")
    if out.is_dir():
        foreign = [e.name for e in out.iterdir() if e.name != REPORT_DIR and not (e.is_dir() and is_run_dir(e))]
        if foreign:
            raise UserError(f"--out {out} holds files that are not ltsam runs ({', '.join(sorted(foreign)[:3])}); "
                            f"refusing to touch it — choose another --out")
    dirs = [Path(str(m.out)) for m in members]
    open_new_members(dirs, members, overwrite)
    return dirs


def open_new_members(dirs: Sequence[Path], members: Sequence[TrainConfig], overwrite: bool) -> None:
    """Every member's folder checked, then all locked (or none: a pack that finds one in use leaves nothing
    behind), checked again under the locks, then emptied, marked and given its config.json."""
    for run_dir in dirs:
        check_run_dir(run_dir, overwrite)
    lock_run_dirs(dirs)
    for run_dir in dirs:
        refuse_unreplaceable(run_dir, overwrite)
    for run_dir, member in zip(dirs, members):
        fill_run_dir(run_dir, overwrite)
        write_json(run_dir / CONFIG_NAME, member.to_dict())


def _pack_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``pack`` record of the run in ``run_dir`` (``None`` for a run alone, or a record that is not one)."""
    try:
        config = read_json(run_dir / CONFIG_NAME)
    except UserError:
        return None
    pack = config.get("pack") if isinstance(config, dict) else None
    if not isinstance(pack, dict):
        return None
    members, index = pack.get("members"), pack.get("index")
    if not (isinstance(members, list) and members and all(isinstance(m, str) for m in members)
            and isinstance(index, int) and 0 <= index < len(members) and isinstance(pack.get("folder"), str)):
        return None
    return pack


def _seeds_pack(pack: dict[str, Any]) -> bool:
    """Whether a pack record is a ``--seeds`` pack's (its members lie in its folder), not a members file's."""
    return all(Path(m).parent == Path(pack["folder"]) for m in pack["members"])


def _key(pack: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    return pack["folder"], tuple(pack["members"])


def _member_records(path: Path) -> dict[str, dict[str, Any]]:
    """The runs inside ``path`` whose record names a ``--seeds`` pack, by folder name."""
    found = {}
    for entry in sorted(path.iterdir()):
        if entry.is_dir() and is_run_dir(entry) and (entry / CONFIG_NAME).is_file():
            pack = _pack_record(entry)
            if pack is not None and _seeds_pack(pack):
                found[entry.name] = pack
    return found


def is_pack_dir(path: Path) -> bool:
    """A folder ``--seeds`` made: not a run itself, holding runs whose config.json names a ``--seeds`` pack
    (the folder may have been moved or renamed since: its members are found by name inside it)."""
    if not path.is_dir() or (path / CONFIG_NAME).exists() or (path / RUN_MARKER).exists():
        return False
    return bool(_member_records(path))


def pack_members(path: Path) -> list[Path]:
    """The member folders of the pack in ``path``, in the pack's order, each found by name inside ``path``. A
    member that is missing, or whose record names another pack, is named and refused."""
    records = _member_records(path)
    key, _ = Counter(_key(r) for r in records.values()).most_common(1)[0]
    names = [Path(m).name for m in key[1]]
    odd = sorted(n for n, r in records.items()
                 if _key(r) != key or n not in names or names.index(n) != r["index"])
    if odd:
        raise UserError(f"--resume {path}: {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} not one of this "
                        f"pack's members (its record names pack {records[odd[0]]['folder']}, member "
                        f"{records[odd[0]]['index']}); move it out of {path}, then resume the pack — nothing "
                        f"was changed")
    missing = [n for n in names if n not in records]
    if missing:
        raise UserError(f"--resume {path}: member{'s' if len(missing) > 1 else ''} {', '.join(missing)} of its "
                        f"pack of {len(names)} ({', '.join(names)}) {'are' if len(missing) > 1 else 'is'} missing "
                        f"from {path}; restore {'them' if len(missing) > 1 else 'it'}, then `ltsam train --resume "
                        f"{path}` — nothing was changed")
    return [path / n for n in names]


def open_pack_for_resume(path: Path) -> tuple[list[TrainConfig], list[Path], list[bool]]:
    """The members of the pack in ``path`` for ``--resume``: their configurations, folders, and whether each has
    a checkpoint to continue (a member that never finished an epoch starts again and catches up). Every member is
    checked before any is touched; then all are locked and repaired as a run's folder is."""
    dirs = pack_members(path)
    then = f"ltsam train --resume {path}"
    started = [check_resumable(run_dir, then) for run_dir in dirs]
    cfgs = [read_run_config(run_dir) for run_dir in dirs]
    lock_run_dirs(dirs)
    for run_dir, resume in zip(dirs, started):
        remove_orphans(run_dir)
        if not resume:
            clear_for_restart(run_dir)
    return cfgs, dirs, started


def repair_members(dirs: Sequence[Path], states: Sequence[tuple[int, int | None, int | None]]) -> None:
    """Each member's best.pt / best_val.pt as its last.pt records them (a kill may fall between the writes)."""
    from ltsam.run.files import BEST_VAL

    for run_dir, (done, best, best_val) in zip(dirs, states):
        if (run_dir / LAST).is_file():
            repair_best(run_dir, done, best)
            repair_best(run_dir, done, best_val, BEST_VAL)


def diverged(run_dir: Path) -> bool:
    """Whether a member stopped on divergence in an earlier run of its pack (it is not trained again)."""
    return (run_dir / DIVERGED_NAME).is_file()


def write_members(path: Path, members: Sequence[tuple[Path, Path]]) -> None:
    """A members file: the runs of one pack, each its settings file (``ltsam train --config``'s) and its folder;
    what ``ltsam sweep --pack`` hands ``ltsam train --members``."""
    write_json(path, {"members": [{"config": str(config), "out": str(out)} for config, out in members]})


def _members_entries(path: Path) -> list[dict[str, str]]:
    """The entries of the members file ``path``, checked for their form."""
    if not path.is_file():
        raise UserError(f"--members {path} does not exist; `ltsam sweep --pack` writes such files")
    doc = read_json(path)
    entries = doc.get("members") if isinstance(doc, dict) else None

    def well_formed(e: object) -> bool:
        return isinstance(e, dict) and isinstance(e.get("config"), str) and isinstance(e.get("out"), str)

    if not isinstance(entries, list) or not entries or not all(well_formed(e) for e in entries):
        raise UserError(f"--members {path} must hold {{\"members\": [{{\"config\": FILE, \"out\": RUN_DIR}}, ...]}}")
    return entries


def _member_paths(path: Path, entries: list[dict[str, str]], out: Path) -> tuple[list[Path], list[Path]]:
    """The settings files and run folders a members file names, relative ones read against the file's own folder.
    Every run folder must lie inside ``out`` (the folder the user gave: a handed file chooses nothing outside
    it), and each once."""
    base = path.parent
    configs = [base / e["config"] for e in entries]  # an absolute path stays as it is
    dirs = [base / e["out"] for e in entries]
    inside = Path(os.path.realpath(out))
    seen: dict[str, Path] = {}
    for run_dir in dirs:
        real = os.path.realpath(run_dir)
        if inside not in Path(real).parents:
            raise UserError(f"--members {path}: run folder {run_dir} lies outside --out {out}; a members file's "
                            f"runs must stay inside the folder you give — check the file, or give the folder that "
                            f"holds them")
        if real in seen:
            raise UserError(f"--members {path} names run folder {run_dir} twice; give each run its own folder")
        seen[real] = run_dir
    return configs, dirs


def _refuse_file_plugins(settings: dict[str, Any], config: Path, plugins: Sequence[str]) -> None:
    """A settings file's ``plugin``/``plugins`` are imported only when this command line names them too."""
    named = list(settings.get("plugin") or [])
    missing = [m for m in named if m not in plugins]
    if missing:
        raise UserError(f"{config} names plugin(s) {', '.join(missing)}; ltsam imports no module a handed file "
                        f"names — if you trust it, pass {' '.join('--plugin ' + m for m in missing)}")


def _fresh_member(path: Path, config: Path, run_dir: Path, plugins: Sequence[str]) -> TrainConfig:
    """The configuration of a member that starts afresh, from its settings file."""
    from ltsam.config import resolve
    from ltsam.recipes import get_recipe
    from ltsam.train_flags import read_settings, settings_overrides

    settings = read_settings(config)
    _refuse_file_plugins(settings, config, plugins)
    overrides, recipe = settings_overrides(settings)
    cfg = resolve(overrides, get_recipe(recipe) if recipe else None)
    cfg.out, cfg.compile = str(run_dir), bool(cfg.compile)
    return cfg


def open_members(path: Path, out: Path, plugins: Sequence[str] = ()) -> tuple[list[TrainConfig], list[Path],
                                                                               list[bool]]:
    """The unfinished runs of a members file as one pack: their configurations, folders, and whether each
    continues from its ``last.pt``. All are resolved and checked before any folder is touched (a run with
    finished epochs but no last.pt is refused, never replaced); then a run with a checkpoint is opened as
    ``--resume`` opens it, one without is started afresh in its folder (replacing what a run that never finished
    an epoch left), and a finished run is left alone. ``out``: the folder every run must lie in; ``plugins``:
    the ``--plugin`` modules of the command line."""
    from ltsam.pack.compat import check_pack
    from ltsam.runs import run_finished

    refuse_dangerous(out, "a members file's runs", "the sweep's folder")
    entries = _members_entries(path)
    configs, dirs = _member_paths(path, entries, out)
    then = f"ltsam train --members {path} --out {out}"
    todo = [i for i, d in enumerate(dirs) if not run_finished(d)]
    cfgs, started = [], []
    for i in todo:
        resume = (dirs[i] / LAST).is_file()
        if resume:
            check_resumable(dirs[i], then)
            cfg = read_run_config(dirs[i])
        else:
            _refuse_lost(dirs[i], path, then)
            cfg = _fresh_member(path, configs[i], dirs[i], plugins)
            cfg.pack = {"folder": str(path), "size": len(dirs), "index": i, "members": [str(d) for d in dirs]}
        cfgs.append(cfg)
        started.append(resume)
    if cfgs:
        check_pack(cfgs)  # before any folder is touched
    _open_members(cfgs, [dirs[i] for i in todo], started)
    return cfgs, [dirs[i] for i in todo], started


def _refuse_lost(run_dir: Path, path: Path, then: str) -> None:
    """A member to start afresh: its folder (if any) must hold a run that never finished an epoch."""
    if run_dir.is_dir() and is_run_dir(run_dir) and epochs_left(run_dir):
        refuse_lost_checkpoint(run_dir, epochs_left(run_dir), f"--members {path}", then,
                               "removing its folder lets the members file start it again")
    if run_dir.exists():
        check_run_dir(run_dir, overwrite=False)


def _open_members(cfgs: Sequence[TrainConfig], dirs: Sequence[Path], started: Sequence[bool]) -> None:
    """Lock every member's folder (all or none), then clear the resumed ones' temporary files and start the
    others afresh."""
    lock_run_dirs(dirs)
    for run_dir, resume in zip(dirs, started):
        if not resume:
            refuse_unreplaceable(run_dir, overwrite=False)
    for cfg, run_dir, resume in zip(cfgs, dirs, started):
        if resume:
            remove_orphans(run_dir)
        else:
            fill_run_dir(run_dir, overwrite=False)
            write_json(run_dir / CONFIG_NAME, cfg.to_dict())
