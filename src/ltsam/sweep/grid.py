"""A sweep's grid: a YAML file expanded into runs, each the settings of one ``ltsam train``, all checked first.

The file (every key optional except one of ``configs`` / ``recipes``)::

    name: digits-sam-vs-sgd           # default: the file's name without .yaml
    out: runs/sweeps/digits           # the sweep folder (default runs/sweeps/<name>; --out wins)
    base: {val-per-class: 10}         # flags every run gets
    configs:                          # one axis: named flag sets (a recipe and/or flags)
      sam: {}
      sgd: {optimizer: sgd}
    grid: {rho: [0.05, 0.1]}          # further axes: every combination of these flag values
    seeds: [0, 1, 2]                  # or a count: 3 = seeds 0, 1, 2
    pack: 3                           # train compatible runs as packs of at most 3 (one job each); --pack wins

``recipes: [cifar10-lt-ce, ...]`` is short for ``configs`` whose flag sets are ``{recipe: NAME}``.
Keys are ``ltsam train`` settings, written as config keys (``imb_factor``) or flag names (``imb-factor``,
``--imb-factor``); a run receives its settings as data (``ltsam train --config FILE``), never as a command
line. Later layers win: base, then the config, then the grid point, then the seed; a recipe's values give way
to any flag the grid sets (as ``ltsam train --recipe`` does). A run is named
``<config>[_<key><value>...]_seed<seed>``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import re
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltsam.argtypes import brief
from ltsam.errors import UserError
from ltsam.io import read_settings_file
from ltsam.train_flags import setting_key, typed_setting

if TYPE_CHECKING:
    from ltsam.config import TrainConfig

# Configuration keys that do not change what a run computes (where and how fast it runs, and where
# it writes); left out of the configuration hash and of the report's grouping.
VOLATILE = ("out", "compile", "device", "workers", "threads", "eval_batch_size", "wandb", "pack")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a sweep's name: a folder name, a job name, a shell word
MAX_RUNS = 10_000  # the most runs a grid may expand to (counted before any list is built)


@dataclass
class RunSpec:
    """One run of a sweep: its name, the ``ltsam train`` settings that define it (flag dests -> typed values),
    its resolved configuration."""

    name: str
    config: str  # the configs entry it comes from
    point: dict[str, Any]  # the grid values it takes
    seed: int
    settings: dict[str, Any]
    _: KW_ONLY
    resolved: dict[str, Any] = field(default_factory=dict)
    checked: bool = True  # False: a dry run left it unchecked (it names plugins, whose code a dry run never runs)

    @property
    def plugins(self) -> list[str]:
        """The ``--plugin`` modules the run names."""
        return list(self.settings.get("plugin") or [])

    @property
    def group(self) -> str:
        """The name without the seed: the runs of one configuration share it."""
        return self.name.rsplit("_seed", 1)[0]

    @property
    def config_hash(self) -> str:
        return config_hash(self.resolved)


@dataclass
class JobSpec:
    """What one job trains: one run, or a pack of compatible runs as one fused model (``pack:`` / ``--pack``)."""

    name: str  # the run's own name, or pack<k> for a pack of several
    runs: list[RunSpec]

    @property
    def packed(self) -> bool:
        return len(self.runs) > 1

    @property
    def plugins(self) -> list[str]:
        """The ``--plugin`` modules of its job: every module any of its runs names, once, in grid order."""
        return list(dict.fromkeys(m for run in self.runs for m in run.plugins))


@dataclass
class Sweep:
    name: str
    out: Path
    runs: list[RunSpec]
    source: Path
    pack: int = 1  # the most runs one job packs
    jobs: list[JobSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.jobs:
            self.jobs = group_jobs(self.runs, self.pack)

    def jobs_of(self, runs: list[RunSpec]) -> list[JobSpec]:
        """The jobs that hold any of ``runs`` (a pack runs whole: its finished members are left alone)."""
        names = {r.name for r in runs}
        return [j for j in self.jobs if any(r.name in names for r in j.runs)]


def group_jobs(runs: list[RunSpec], size: int) -> list[JobSpec]:
    """``runs`` as jobs: compatible runs (``ltsam.pack.compat.pack_key``) in packs of at most ``size``, in grid
    order; a run that cannot pack (or a dry run left unchecked) alone."""
    if size <= 1:
        return [JobSpec(r.name, [r]) for r in runs]
    from ltsam.config import TrainConfig
    from ltsam.pack.compat import pack_key, unpackable_reason

    groups: dict[str, list[RunSpec]] = {}
    alone: list[RunSpec] = []
    order: list[str | RunSpec] = []
    for run in runs:
        key: str | None = None
        if run.checked:
            cfg = TrainConfig.from_dict(run.resolved)
            key = None if unpackable_reason(cfg) else pack_key(cfg)
        if key is None:
            alone.append(run)
            order.append(run)
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(run)
    jobs: list[JobSpec] = []
    for item in order:
        if isinstance(item, RunSpec):
            jobs.append(JobSpec(item.name, [item]))
            continue
        members = groups[item]
        for i in range(0, len(members), size):
            chunk = members[i:i + size]
            jobs.append(JobSpec(chunk[0].name if len(chunk) == 1 else f"pack{len(jobs) + 1}", chunk))
    return jobs


def config_hash(config: dict[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of the configuration (volatile keys left out) as sorted JSON."""
    kept = {k: v for k, v in config.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_sweep(path: str | Path, out: str | Path | None = None, run_plugins: bool = True,
               pack: int | None = None) -> Sweep:
    """Read, expand and validate a grid file; nothing is started. A bad entry is a UserError naming it.
    ``run_plugins=False`` (a dry run) imports no plugin: a run that names one is left unchecked. ``pack``
    (``--pack``) overrides the grid's ``pack:``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file {path} does not exist; write a YAML grid (see `ltsam sweep --help`)")
    doc = read_grid(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a grid is a YAML mapping with configs (or recipes), and optionally base, grid, "
                        f"seeds, name, out")
    unknown = sorted(set(doc) - {"name", "out", "base", "configs", "recipes", "grid", "seeds", "pack"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; use name, out, base, configs, "
                        f"recipes, grid, seeds, pack")
    size = pack if pack is not None else doc.get("pack", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"{path}: pack must be a whole number of at least 1 (the most runs one job packs), "
                        f"got {brief(size)}")
    name = str(doc.get("name") or path.stem)
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{path}: sweep name {brief(name)} may hold only letters, digits and . _ + - (starting with a "
                        f"letter or digit, no '..'); set `name:` in the grid to such a name")
    folder = Path(out) if out else Path(doc.get("out") or Path("runs") / "sweeps" / name)
    try:
        runs = expand(doc, str(path), run_plugins)
    except UserError as exc:
        if run_plugins or "is not an `ltsam train` setting" not in str(exc) or not _names_plugins(doc, str(path)):
            raise
        raise UserError(f"{exc}; a plugin's options are settings only once it is imported, which a dry run never "
                        f"does: run without --dry-run to check them") from None
    return Sweep(name, folder, runs, path, size)


def read_grid(path: Path) -> Any:
    """The grid file's YAML document, read as handed data (alias expansion capped, values cut in messages)."""
    return read_settings_file(path, "grid file")


def _configs(doc: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    configs: list[tuple[str, dict[str, Any]]] = []
    recipes = doc.get("recipes") or []
    if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
        raise UserError(f"{where}: recipes must be a list of recipe names (`ltsam recipes`)")
    configs += [(r, {"recipe": r}) for r in recipes]
    raw = doc.get("configs") or {}
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for i, entry in enumerate(raw):
            if isinstance(entry, str):
                items.append((entry, {"recipe": entry}))
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
            else:
                raise UserError(f"{where}: configs[{i}] must be a recipe name or a mapping with a name")
    else:
        raise UserError(f"{where}: configs must map names to flag sets, or list them")
    for label, values in items:
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"{where}: config {brief(label)} must be a mapping of flags to values, got {brief(values)}")
        configs.append((str(label), values))
    if not configs:
        raise UserError(f"{where}: no runs: give configs (named flag sets) or recipes")
    labels = [c for c, _ in configs]
    dupes = sorted({c for c in labels if labels.count(c) > 1})
    if dupes:
        raise UserError(f"{where}: config name(s) {', '.join(dupes)} given twice; names must be unique")
    return configs


def _seed_count(doc: dict[str, Any], where: str) -> int:
    """How many seeds the grid asks for, without building the list (``seeds: 10**12`` is a count)."""
    seeds = doc.get("seeds", [0])
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise UserError(f"{where}: seeds must be a count or a list of seeds, got {brief(seeds)}")
    if isinstance(seeds, int) and seeds < 1:
        raise UserError(f"{where}: seeds must be at least 1, got {seeds}")
    return seeds if isinstance(seeds, int) else len(seeds)


def _seeds(doc: dict[str, Any], where: str) -> list[int]:
    seeds = doc.get("seeds", [0])
    if isinstance(seeds, int):
        return list(range(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise UserError(f"{where}: seeds must be non-negative integers, got {brief(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: seeds {seeds} repeat a seed")
    return list(seeds)


def expand(doc: dict[str, Any], where: str = "grid", run_plugins: bool = True) -> list[RunSpec]:
    """Every run of a grid document, each validated as ``ltsam train --config`` validates its settings (a run
    naming plugins only when ``run_plugins``: checking it imports them)."""
    base = doc.get("base") or {}
    if not isinstance(base, dict):
        raise UserError(f"{where}: base must be a mapping of flags to values")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must map flags to lists of values")
    configs = _configs(doc, where)
    named = grid_plugins([base, grid, *(values for _, values in configs)])
    if run_plugins and named:  # before the keys are read: a plugin's options are settings once it is imported
        from ltsam.extensions import load_plugins

        load_plugins(named)
    axes: list[tuple[str, str, list[Any]]] = []  # (settings key, the grid's spelling, values)
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: grid.{key} has no values")
        axes.append((_key(key, f"{where}: grid.{key}"), str(key), values))
    base_settings = _settings(base, f"{where}: base")
    points, n_seeds = math.prod(len(v) for _, _, v in axes), _seed_count(doc, where)
    if len(configs) * points * n_seeds > MAX_RUNS:
        raise UserError(f"{where}: the grid asks for {len(configs) * points * n_seeds:,} runs ({len(configs)} "
                        f"config(s) x {points:,} grid point(s) x {n_seeds:,} seed(s)); a sweep runs at most "
                        f"{MAX_RUNS:,}: use fewer seeds or grid values")
    seeds = _seeds(doc, where)
    runs: list[RunSpec] = []
    for label, values in configs:
        own = _settings(values, f"{where}: config {label}")
        for combo in itertools.product(*(v for _, _, v in axes)):
            point = {k: v for (k, _, _), v in zip(axes, combo)}
            typed = {k: typed_setting(spelling, v, f"{where}: grid.{spelling}")
                     for (k, spelling, _), v in zip(axes, combo) if v is not None}
            for seed in seeds:
                settings = {**base_settings, **own, **typed, "seed": seed}
                runs.append(RunSpec(_run_name(label, point, seed), label, point, seed, settings))
    dupes = sorted(n for n, k in collections.Counter(r.name for r in runs).items() if k > 1)
    if dupes:
        raise UserError(f"{where}: run name(s) {', '.join(dupes[:3])} come out twice; make config names and grid "
                        f"values distinct")
    for run in runs:
        if not run_plugins and run.plugins:
            run.checked = False
            continue
        run.resolved = resolve_settings(run.settings, f"{where}: run {run.name}")
    return runs


def _names_plugins(doc: dict[str, Any], where: str) -> bool:
    return bool(grid_plugins([doc.get("base"), doc.get("grid"), *(v for _, v in _configs(doc, where))]))


def grid_plugins(layers: list[Any]) -> list[str]:
    """The plugin modules the grid's layers name (``plugin:`` / ``plugins:``, a word or a list; a grid axis: a list
    of either), once each, in order, read before any other key."""
    found: list[str] = []
    for layer in layers:
        for key, value in (layer.items() if isinstance(layer, dict) else ()):
            if str(key).lstrip("-").lower() not in ("plugin", "plugins"):
                continue
            for item in value if isinstance(value, list) else [value]:
                found += [m for m in (item if isinstance(item, list) else [item]) if isinstance(m, str)]
    return list(dict.fromkeys(found))


def _key(name: Any, where: str) -> str:
    """The settings key of a grid key; a flag that steers the command is refused (the sweep gives each run its
    own --out and resumes it from last.pt; ``seeds:`` is the grid's own key)."""
    from ltsam.train_flags import COMMAND_FLAGS, flag_table

    action = flag_table().get(str(name).lstrip("-").replace("-", "_").lower())
    if action is not None and action.dest in COMMAND_FLAGS:
        raise UserError(f"{where}: {brief(name)} is set by the sweep itself (each run gets its own --out and "
                        f"resumes from last.pt; the grid's seeds: key gives the seeds); remove it")
    return setting_key(name, where)


def _settings(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Grid keys and values as typed settings: keys canonical, words read as the flags read them."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = _key(name, f"{where}: {name}")
        if value is not None:
            out[key] = typed_setting(str(name), value, f"{where}: {name}")
    return out


def resolve_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """A run's configuration as ``ltsam train --config`` resolves its settings (``config.json``'s layout,
    before the run settles ``compile``), importing the plugins the run names."""
    from ltsam.config import resolve
    from ltsam.extensions import load_plugins
    from ltsam.recipes import get_recipe
    from ltsam.train_flags import settings_overrides

    load_plugins(list(settings.get("plugin") or []))
    try:
        overrides, recipe = settings_overrides(settings)
        cfg = resolve(overrides, get_recipe(recipe) if recipe else None)
        _check_data_root(cfg)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return cfg.to_dict()


def _run_name(label: str, point: dict[str, Any], seed: int) -> str:
    parts = [label] + [f"{k}{_name_part(v)}" for k, v in point.items()]
    text = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") + f"_seed{seed}"


def _name_part(value: Any) -> str:
    """A setting's value as it stands in a run folder's name (a list joined by ``-``, floats in %g)."""
    if isinstance(value, list):
        return "-".join(map(_name_part, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_data_root(cfg: TrainConfig) -> None:
    """A data set that reads files needs its --data-root (CIFAR may download into it instead)."""
    from ltsam.data.catalog import DATASETS

    needs = DATASETS.entry(cfg.dataset).meta.get("needs_root", False)
    if needs and not cfg.download and not Path(cfg.data_root).exists():
        raise UserError(f"--data-root {cfg.data_root} does not exist ({cfg.dataset} reads its images there)")
