"""ltsam: long-tailed image classification with SAM, and per-class loss-landscape analysis."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["SAM", "__version__"]


def __getattr__(name: str) -> Any:
    """``ltsam.SAM``, imported on first use: importing the package imports no third-party module (torch),
    so that ``python -m ltsam`` can make ``sys.path`` safe before any is imported (see ``__main__``)."""
    if name == "SAM":
        from ltsam.optim.sam import SAM

        return SAM
    raise AttributeError(f"module 'ltsam' has no attribute {name!r}")
