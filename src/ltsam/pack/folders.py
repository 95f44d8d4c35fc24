"""The folder of a pack started by ``ltsam train --seeds``: one ordinary run folder per member
(``OUT/seed0``, ``OUT/seed1``, ...), each member's ``config.json`` naming the pack (``pack``: its folder, size,
the member's index and the members' folders). ``ltsam train --resume OUT`` resumes them as one pack; a
member's own folder resumes alone like any run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ltsam.errors import UserError
from ltsam.io import read_json, write_json
from ltsam.run.files import CONFIG_NAME, DIVERGED_NAME, LAST, RUN_MARKER
from ltsam.runs import is_run_dir, open_for_resume, prepare_run_dir, read_run_config, refuse_dangerous, repair_best

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
    for run_dir, member in zip(dirs, members):
        prepare_run_dir(run_dir, overwrite)
        write_json(run_dir / CONFIG_NAME, member.to_dict())
    return dirs


def is_pack_dir(path: Path) -> bool:
    """A folder ``--seeds`` made: not a run itself, holding runs whose config.json names it as their pack."""
    if (path / CONFIG_NAME).exists() or (path / RUN_MARKER).exists() or not path.is_dir():
        return False
    return bool(_member_dirs(path))


def _member_dirs(path: Path) -> list[Path]:
    found = []
    for entry in sorted(path.iterdir()):
        config = entry / CONFIG_NAME
        if entry.is_dir() and is_run_dir(entry) and config.is_file():
            pack = read_json(config).get("pack")
            if isinstance(pack, dict) and Path(str(pack.get("folder"))).resolve() == path.resolve():
                found.append(entry)
    return found


def open_pack_for_resume(path: Path) -> tuple[list[TrainConfig], list[Path], list[bool]]:
    """The members of the pack in ``path`` for ``--resume``: their configurations, folders, and whether each has
    a checkpoint to continue (each folder locked and repaired as a run's is)."""
    dirs = _member_dirs(path)
    cfgs, started = [], []
    for run_dir in dirs:
        started.append(open_for_resume(run_dir))
        cfgs.append(read_run_config(run_dir))
    if any(started) and not all(started):
        missing = [d.name for d, s in zip(dirs, started) if not s]
        raise UserError(f"--resume {path}: {', '.join(missing)} stopped before its first checkpoint while the others "
                        f"have one; resume those alone (`ltsam train --resume {dirs[started.index(False)]}`)")
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


def open_members(path: Path) -> tuple[list[TrainConfig], list[Path], list[bool]]:
    """The unfinished runs of a members file as one pack: their configurations, folders, and whether each
    continues from its ``last.pt``. All are resolved and checked before any folder is touched; then a run with a
    checkpoint is opened as ``--resume`` opens it, one without is started afresh in its folder (replacing what a
    run that never finished an epoch left), and a finished run is left alone."""
    from ltsam.config import resolve
    from ltsam.pack.compat import check_pack
    from ltsam.recipes import get_recipe
    from ltsam.runs import run_finished
    from ltsam.train_flags import read_settings, settings_overrides

    if not path.is_file():
        raise UserError(f"--members {path} does not exist; `ltsam sweep --pack` writes such files")
    doc = read_json(path)
    entries = doc.get("members") if isinstance(doc, dict) else None
    def well_formed(e: object) -> bool:
        return isinstance(e, dict) and isinstance(e.get("config"), str) and isinstance(e.get("out"), str)

    if not isinstance(entries, list) or not entries or not all(well_formed(e) for e in entries):
        raise UserError(f"--members {path} must hold {{\"members\": [{{\"config\": FILE, \"out\": RUN_DIR}}, ...]}}")
    dirs = [Path(e["out"]) for e in entries]
    todo = [i for i, d in enumerate(dirs) if not run_finished(d)]
    cfgs, started = [], []
    for i in todo:
        if (dirs[i] / LAST).is_file():
            cfg, resume = read_run_config(dirs[i]), True
        else:
            overrides, recipe = settings_overrides(read_settings(entries[i]["config"]))
            cfg, resume = resolve(overrides, get_recipe(recipe) if recipe else None), False
            cfg.out, cfg.compile = str(dirs[i]), bool(cfg.compile)
            cfg.pack = {"folder": str(path), "size": len(dirs), "index": i, "members": [str(d) for d in dirs]}
        cfgs.append(cfg)
        started.append(resume)
    if cfgs:
        check_pack(cfgs)  # before any folder is touched
    for cfg, run_dir, resume in zip(cfgs, [dirs[i] for i in todo], started):
        if resume:
            open_for_resume(run_dir)
        else:
            prepare_run_dir(run_dir, overwrite=True)
            write_json(run_dir / CONFIG_NAME, cfg.to_dict())
    return cfgs, [dirs[i] for i in todo], started
