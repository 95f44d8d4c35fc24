"""ltsam: long-tailed image classification with SAM, and per-class loss-landscape analysis."""

from ltsam.sam import SAM

__version__ = "0.1.0"
__all__ = ["SAM", "__version__"]
