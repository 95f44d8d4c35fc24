"""The optional libraries of ``ltsam[pretrained]``, imported when first needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from ltsam.errors import UserError

INSTALL = "pip install 'ltsam[pretrained]'"


def require(module: str, what: str) -> ModuleType:
    """``import module``, or one line naming ``what`` needs it and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{what} needs {module.partition('.')[0]}, which cannot be imported ({exc}); "
                        f"install the extra: {INSTALL}") from None
