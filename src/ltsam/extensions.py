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
from ltsam.data.registry import DATASETS
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


_loaded: set[str] = set()


def load_plugins(modules: Iterable[str] = (), entry_points: bool = True) -> list[str]:
    """Import plugin modules (their registrations take effect); returns the module names loaded.

    ``entry_points`` also loads every ``ltsam.plugins`` entry point of the installed packages.
    """
    names = [m for m in modules if m]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import plugin {name!r} ({exc}); check the module name and that it is "
                            f"importable (PYTHONPATH or pip install)") from None
        _loaded.add(name)
    if entry_points and "ep" not in _loaded:
        _loaded.add("ep")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must not stop ltsam
                print(f"ltsam: warning: plugin entry point {ep.name!r} failed to load: {exc}", file=sys.stderr)
    return names
