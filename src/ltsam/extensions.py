"""Every extension point by the config key that names its entries, their options, and plugins.

Importing this module registers everything ltsam ships (GLMC included); ``load_plugins`` imports
a user's modules (``--plugin``) and the ``ltsam.plugins`` entry-point group of installed packages,
whose decorators register their entries the same way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterable
from typing import Any

import ltsam.glmc.method  # noqa: F401  (registers --method glmc and --lr-schedule glmc)
import ltsam.glmc.schedule  # noqa: F401
from ltsam.data.catalog import DATASETS
from ltsam.errors import UserError
from ltsam.losses import LOSSES
from ltsam.methods import METHODS
from ltsam.models import MODELS
from ltsam.optim import STEPS
from ltsam.registry import Option, Registry
from ltsam.rules import TRAIN_RULES
from ltsam.schedules import LR_SCHEDULES, RHO_SCHEDULES

ENTRY_POINT_GROUP = "ltsam.plugins"

# The config key whose value names an entry -> its registry. Models are checked by the method
# (GLMC accepts its own architectures too), so ``arch`` is not validated here.
REGISTRIES: dict[str, Registry[Any]] = {
    "dataset": DATASETS, "arch": MODELS, "method": METHODS, "loss": LOSSES, "train_rule": TRAIN_RULES,
    "optimizer": STEPS, "lr_schedule": LR_SCHEDULES, "rho_schedule": RHO_SCHEDULES,
}


def all_options() -> dict[str, Option]:
    """Every option any registered entry declares, by config key; one name, one meaning."""
    found: dict[str, tuple[Option, str]] = {}
    for key, registry in REGISTRIES.items():
        for option in registry.options():
            old = found.get(option.name)
            if old is not None and (old[0].type, old[0].default) != (option.type, option.default):
                raise UserError(f"option {option.name!r} is declared by {old[1]} and by {key} entries with "
                                f"different types or defaults; rename one of them")
            found.setdefault(option.name, (option, key))
    return {name: option for name, (option, _) in found.items()}


_loaded: set[str] = set()  # modules named by --plugin in this process
_entry_point_modules: set[str] = set()  # modules of the ltsam.plugins entry points that loaded
_entry_points_read = False


def load_plugins(modules: Iterable[str] = (), entry_points: bool = True) -> list[str]:
    """Import plugin modules (their registrations take effect); returns the module names loaded.

    Only for modules the user names (``--plugin``, a grid's ``plugin:``): a name read from a run folder
    goes through :func:`require_plugins`, which imports nothing. ``entry_points`` also loads every
    ``ltsam.plugins`` entry point of the installed packages (installing a package is the user's choice).
    A module that fails to import, whatever it raises, is one line naming it.
    """
    global _entry_points_read
    names = [m for m in modules if m]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import plugin {name!r} ({exc}); check the module name and that it is "
                            f"importable (PYTHONPATH or pip install)") from None
        except Exception as exc:  # noqa: BLE001 - a plugin's own error (SyntaxError, a failing registration ...)
            raise UserError(f"plugin {name!r} failed while being imported ({_where(exc)}{type(exc).__name__}: "
                            f"{_first_line(exc)}); fix the module or drop --plugin {name}") from None
        _loaded.add(name)
    if entry_points and not _entry_points_read:
        _entry_points_read = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must not stop ltsam
                print(f"ltsam: warning: plugin entry point {ep.name!r} failed to load: {exc}", file=sys.stderr)
            else:
                _entry_point_modules.add(ep.module)
    return names


def missing_plugins(named: Iterable[Any]) -> list[str]:
    """The modules of ``named`` that this process has not loaded: neither named by its command line
    (``--plugin``) nor an installed ``ltsam.plugins`` entry point."""
    available = _loaded | _entry_point_modules
    return [m for m in named if isinstance(m, str) and m and m not in available]


def require_plugins(recorded: Iterable[str], what: str = "this run") -> None:
    """Check that the plugins a saved run records are loaded, importing nothing.

    A run folder or checkpoint is data that someone may hand over: the module names in its
    configuration are never imported from it. A recorded plugin is usable only when this command
    line named it (``--plugin``) or an installed package provides it as an ``ltsam.plugins`` entry
    point; otherwise one line says which ``--plugin`` to pass.
    """
    missing = missing_plugins(recorded)
    if missing:
        flags = " ".join(f"--plugin {m}" for m in missing)
        raise UserError(f"{what} was trained with plugin(s) {', '.join(missing)}, which ltsam does not import from "
                        f"a run folder; if you trust that code, pass {flags}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _where(exc: BaseException) -> str:
    """``file:line: `` of a syntax error (the rest of an import error's place is in its message)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: "
    return ""
