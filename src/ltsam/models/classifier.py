"""Where a model keeps its classifier: each architecture declares ``classifier_paths`` (attribute paths of its
classifier modules, the head used for prediction first), so that second stages and classifier-only SAM need no
list of names. A model that declares none keeps its classifier at ``linear``."""

from __future__ import annotations

from torch import nn

DEFAULT_PATHS = ("linear",)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model itself under ``torch.compile`` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def classifier_paths(model: nn.Module) -> tuple[str, ...]:
    """The model's classifier modules by attribute path, the prediction head first."""
    return tuple(getattr(unwrapped(model), "classifier_paths", DEFAULT_PATHS))
