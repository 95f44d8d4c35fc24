"""What ``ltsam report`` counts: which run folders, read how, and each run once.

A folder counts when it carries ltsam's run marker (``runs.is_run_dir``) and its run finished
(``runs.run_finished``: final.json records ``epochs_done >= epochs``; a ``--stop-after`` run has not, a
tau-norm stage with ``epochs 0`` has). ``--partial`` also takes unfinished runs, marked as such. A copy of a
run folder (the same run id in its marker) and two runs of one configuration and seed are one run, not two
independent ones: they count once, with a warning. A damaged config.json, final.json or metrics.jsonl line
stops the report with one line naming the file: leaving the run out would change n and the means unseen.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltsam.errors import UserError
from ltsam.metrics import best_record
from ltsam.run.files import CONFIG_NAME, FINAL_NAME, LAST, METRICS_NAME
from ltsam.runs import RUN_MARKER, is_run_dir, is_stage_config, run_finished, run_id
from ltsam.sweep.grid import VOLATILE

SHOTS = ("many", "medium", "few")
GROUP_IGNORES = set(VOLATILE) | {"seed"}  # settings that do not define a configuration
FOREIGN = f"not an ltsam run folder: no {RUN_MARKER} marker"


@dataclass(kw_only=True)
class RunResult:
    """What the report reads from one run folder."""

    path: Path
    settings: dict[str, Any]  # what defines its configuration: all settings but the seed and volatile ones
    seed: int  # a stage run's is its parent's
    complete: bool
    epochs_done: int
    epochs: int | None
    picks: dict[str, dict[str, Any] | None]  # selection -> {top1, many, medium, few, epoch, per_class}
    cls_num_list: list[int]
    curves: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    stage_seed: int | None = None  # a stage run's own seed (cRT's new classifier, its sampling)
    run_id: str | None = None

    @property
    def identity(self) -> str:
        """Configuration and seeds: two runs equal in this are not independent."""
        return json.dumps([self.settings, self.seed, self.stage_seed], sort_keys=True, default=str)


@dataclass
class Selection:
    """The runs that count, and what was left out or merged (folder paths)."""

    runs: list[RunResult]
    foreign: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)  # left out (without --partial)
    empty: list[Path] = field(default_factory=list)  # unfinished with no finished epoch (with --partial)
    merged: list[tuple[list[RunResult], str]] = field(default_factory=list)  # (kept first, the others), why


def _damaged(path: Path, problem: str) -> UserError:
    return UserError(f"{path} is damaged ({problem}); restore it from a copy, or move its run folder out of the "
                     f"folders you report on")


def _read_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not valid JSON: {str(exc)[:80]}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if not isinstance(value, dict):
        raise _damaged(path, "not a JSON object")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _result_problem(result: Any, name: str, need_epoch: bool = False) -> str | None:
    """What is wrong with one result block of final.json ({top1, shot_acc, per_class_acc, epoch})."""
    if not isinstance(result, dict):
        return f"'{name}' is not an object"
    if not _is_number(result.get("top1")):
        return f"'{name}.top1' is not a number"
    shots = result.get("shot_acc")
    if shots is not None and (not isinstance(shots, dict) or not all(_is_number(shots.get(k)) for k in SHOTS)):
        return f"'{name}.shot_acc' is not an object of numbers"
    per_class = result.get("per_class_acc")
    if per_class is not None and (not isinstance(per_class, list) or not all(map(_is_number, per_class))):
        return f"'{name}.per_class_acc' is not a list of numbers"
    if need_epoch and not _is_int(result.get("epoch")):
        return f"'{name}.epoch' is not an integer"
    return None


def read_final(path: Path) -> dict[str, Any] | None:
    """``path/final.json`` checked for what the report reads; None when there is none."""
    file = path / FINAL_NAME
    if not file.is_file():
        return None
    final = _read_object(file)
    for key in ("epochs_done", "epochs"):
        if not _is_int(final.get(key)):
            raise _damaged(file, f"'{key}' is not an integer")
    counts = final.get("cls_num_list")
    if not isinstance(counts, list) or not all(_is_int(c) for c in counts):
        raise _damaged(file, "'cls_num_list' is not a list of integers")
    problem = _result_problem(final.get("final"), "final")
    if problem is None and final.get("best") is not None:
        problem = _result_problem(final["best"], "best")
    if problem is None and final.get("best_val"):
        problem = _result_problem(final["best_val"], "best_val", need_epoch=True)
    if problem:
        raise _damaged(file, problem)
    return final


def read_config(path: Path) -> dict[str, Any]:
    """``path/config.json``: a training run's settings, or a stage run's (stage, options, parent)."""
    file = path / CONFIG_NAME
    config = _read_object(file)
    if not _is_int(config.get("seed", 0)):
        raise _damaged(file, "'seed' is not an integer")
    if "stage" in config or "parent" in config:
        if not (is_stage_config(config) and isinstance(config.get("options", {}), dict)
                and isinstance(config["parent"], dict)):
            raise _damaged(file, "a stage run's 'stage', 'options' or 'parent' is missing or not an object")
    return config


NUMERIC_ROW_KEYS = ("test_top1", "val_top1", *(f"{k}_acc" for k in SHOTS))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path/metrics.jsonl`` (none without one). A last line without its newline is being
    written and is skipped; any other line that is not a JSON object of numbers is damage."""
    file = path / METRICS_NAME
    if not file.is_file():
        return []
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        raise _damaged(file, "not text") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: a line being written
                continue
            raise _damaged(file, f"line {number} is not valid JSON") from None
        if not isinstance(row, dict) or not all(_is_number(row.get(k)) for k in NUMERIC_ROW_KEYS) or \
                ("epoch" in row and not _is_int(row["epoch"])):
            raise _damaged(file, f"line {number} is not an object of one epoch's numbers")
        rows.append(row)
    return rows


def _from_final(result: dict[str, Any] | None, epoch: int | None = None) -> dict[str, Any] | None:
    if not result:
        return None
    shots = result.get("shot_acc") or {}
    return {"top1": result.get("top1"), **{k: shots.get(k) for k in SHOTS},
            "epoch": result.get("epoch", epoch), "per_class": result.get("per_class_acc"),
            "val_top1": result.get("val_top1")}


def _from_row(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metrics.jsonl record as a pick: test top-1 and shot groups at that epoch."""
    if record is None:
        return None
    return {"top1": record.get("test_top1"), **{k: record.get(f"{k}_acc") for k in SHOTS},
            "epoch": record.get("epoch"), "per_class": record.get("per_class_acc")}


def _parent_config(path: Path, final: dict[str, Any] | None) -> dict[str, Any]:
    """A stage run's parent configuration: final.json's ``parent_config``, or (stage folders written before
    it) the ``config`` its last.pt carries."""
    from ltsam.io import load_checkpoint

    recorded = (final or {}).get("parent_config")
    if isinstance(recorded, dict):
        return recorded
    if not (path / LAST).is_file():
        raise UserError(f"{path} is a stage run that records no parent configuration (no parent_config in its "
                        f"final.json, no last.pt); restore its last.pt, or leave the folder out")
    return load_checkpoint(path / LAST)["config"]


def _settings(path: Path, config: dict[str, Any], final: dict[str, Any] | None
              ) -> tuple[dict[str, Any], int, int | None]:
    """(what defines the run's configuration, the seed it stands for, a stage run's own seed). A stage run
    is its stage, options, recipe and parent checkpoint kind on the parent's configuration without its seed:
    stages on parents of different seeds are seeds of one configuration."""
    if not is_stage_config(config):
        return {k: v for k, v in config.items() if k not in GROUP_IGNORES}, int(config.get("seed", 0)), None
    parent = _parent_config(path, final)
    seed = parent.get("seed", 0)
    if not _is_int(seed):
        raise _damaged(path / FINAL_NAME, "the parent configuration's 'seed' is not an integer")
    settings = {"stage": config["stage"], "stage_options": config.get("options", {}),
                "stage_recipe": config.get("recipe"), "parent_which": config["parent"].get("which"),
                **{f"parent.{k}": v for k, v in parent.items() if k not in GROUP_IGNORES}}
    return settings, seed, int(config.get("seed", 0))


def read_run(path: Path, partial: bool = False) -> RunResult | None:
    """A run folder's results; None for an unfinished run unless ``partial`` (then its last finished epoch
    stands for "last"), or for one that finished no epoch."""
    config = read_config(path)
    final = read_final(path)
    rows = read_metrics(path)
    finished = final is not None and run_finished(path)
    if not finished and not partial:
        return None
    if final is None and not any(_is_int(r.get("epoch")) for r in rows):
        return None
    settings, seed, stage_seed = _settings(path, config, final)
    common: dict[str, Any] = {"path": path, "settings": settings, "seed": seed, "complete": finished, "curves": rows,
              "stage_seed": stage_seed, "run_id": run_id(path)}
    if final is not None:
        picks = {"last": _from_final(final["final"], len(rows) - 1 if rows else None),
                 "best_val": _from_final(final.get("best_val")), "best_test": _from_final(final.get("best"))}
        return RunResult(epochs_done=final["epochs_done"], epochs=final["epochs"], picks=picks,
                         cls_num_list=final["cls_num_list"], **common)
    epochs = [r for r in rows if _is_int(r.get("epoch"))]
    picks = {"last": _from_row(epochs[-1]), "best_val": _from_row(best_record(epochs, "val_top1")),
             "best_test": _from_row(best_record(epochs, "test_top1"))}
    return RunResult(epochs_done=len(epochs), epochs=config.get("epochs"), picks=picks,
                     cls_num_list=_cls_num_list(path), **common)


def _cls_num_list(path: Path) -> list[int]:
    """Class sizes of an unfinished run, from its last checkpoint."""
    from ltsam.io import load_checkpoint

    try:
        return list(load_checkpoint(path / LAST).get("cls_num_list") or [])
    except UserError:
        return []


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Folders holding a config.json named, or found under the folders named (a sweep, a runs/ folder);
    :func:`select_runs` then keeps those with ltsam's marker."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass run folders or sweep folders")
        if (p / CONFIG_NAME).is_file():
            found.append(p)
            continue
        under = sorted(c.parent for c in p.rglob(CONFIG_NAME) if "report" not in c.relative_to(p).parts[:-1])
        if not under:
            raise UserError(f"{p} holds no run folders (no config.json under it); pass run or sweep folders")
        found += under
    seen, out = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def merge_duplicates(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[tuple[list[RunResult], str]]]:
    """Each run once, in the order first seen: copies of a folder (one run id), and runs of one configuration
    and seed (not independent), are one run; a finished one is kept over an unfinished one. Returns the
    runs kept and, for each merge, (the runs, kept one first; why)."""
    sets: list[list[RunResult]] = []
    by_id: dict[str, int] = {}
    by_identity: dict[str, int] = {}
    for r in runs:
        index = by_id.get(r.run_id) if r.run_id else None
        if index is None:
            index = by_identity.get(r.identity)
        if index is None:
            index = len(sets)
            sets.append([])
        sets[index].append(r)
        if r.run_id:
            by_id.setdefault(r.run_id, index)
        by_identity.setdefault(r.identity, index)
    kept, merged = [], []
    for members in sets:
        members.sort(key=lambda r: (not r.complete, -r.epochs_done))  # stable: the first seen among equals
        kept.append(members[0])
        if len(members) > 1:
            ids = {r.run_id for r in members}
            why = (f"copies of one run (run id {members[0].run_id})" if len(ids) == 1 and None not in ids else
                   "the same configuration and seed: not independent runs")
            merged.append((members, why))
    return kept, merged


def select_runs(folders: Sequence[Path], partial: bool = False) -> Selection:
    """The runs of ``folders`` that count (see the module's docstring), and what was left out or merged."""
    selection = Selection([])
    runs = []
    for p in folders:
        if not is_run_dir(p):
            selection.foreign.append(p)
            continue
        result = read_run(p, partial)
        if result is None:
            (selection.empty if partial else selection.unfinished).append(p)
        else:
            runs.append(result)
    selection.runs, selection.merged = merge_duplicates(runs)
    return selection


def names(paths: Sequence[Path], most: int = 5) -> str:
    """Folder names for a one-line note."""
    shown = [p.name for p in paths[:most]]
    return ", ".join(shown) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def seedless(name: str) -> str:
    """A run-folder name without its ``_seed<N>`` part (``ce_seed0`` -> ``ce``, ``ce_seed0_crt`` -> ``ce_crt``);
    a ``--seeds`` member's own name (``seed0``) leaves nothing: ``""``."""
    return re.sub(r"(^|_)seed\d+(?=_|$)", "", name).lstrip("_")
