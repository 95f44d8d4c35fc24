"""A run's checkpoints: writing last.pt / best.pt / best_val.pt, and loading saved state back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltsam.errors import UserError
from ltsam.faults import signals_held
from ltsam.io import load_checkpoint, save_checkpoint
from ltsam.run.files import BEST, BEST_VAL, LAST


def save_run_checkpoints(run_dir: Path, payload: dict[str, Any], best: bool, best_val: bool = False) -> None:
    """``last.pt`` always; ``best.pt`` / ``best_val.pt`` too when this epoch is the best on test / validation.
    Ctrl-C and SIGTERM wait until they are written (``ltsam.faults.signals_held``)."""
    with signals_held():
        save_checkpoint(run_dir / LAST, payload)
        if best:
            save_checkpoint(run_dir / BEST, payload)
        if best_val:
            save_checkpoint(run_dir / BEST_VAL, payload)


def load_last(run_dir: Path) -> dict[str, Any]:
    """The checkpoint a resumed run continues from."""
    return load_checkpoint(Path(run_dir) / LAST)


def load_states(ckpt: dict[str, Any], targets: list[tuple[Any, str]], refusal: str) -> None:
    """``obj.load_state_dict(ckpt[key])`` for each ``(obj, key)``; a missing or unfitting state is one
    :class:`UserError`: ``refusal``, its ``{reason}`` the first line of what torch said."""
    try:
        for obj, key in targets:
            obj.load_state_dict(ckpt[key])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(refusal.format(reason=str(exc).strip().splitlines()[0][:160])) from None


def restore_scaler(scaler: Any, ckpt: dict[str, Any]) -> None:
    """The fp16 loss scale, where the run uses one and the checkpoint kept it."""
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


def scaler_state(scaler: Any) -> dict[str, Any] | None:
    return scaler.state_dict() if scaler is not None else None


def training_checkpoint(epochs_done: int, *, model: dict[str, Any], optimizer: dict[str, Any],
                        meta: dict[str, Any], config: dict[str, Any], data: Any, progress: dict[str, Any],
                        scaler: dict[str, Any] | None, step: dict[str, Any]) -> dict[str, Any]:
    """A training run's ``last.pt`` / ``best.pt`` / ``best_val.pt`` after ``epochs_done`` epochs: the weights
    and optimizer state, how to rebuild the model, the configuration, the data's classes and the progress
    (``Progress.checkpoint_fields``). A pack's member writes the same, so it resumes alone."""
    return {"epoch": epochs_done, "model": model, "optimizer": optimizer, "model_meta": meta, "config": config,
            "cls_num_list": data.cls_num_list, "classes": data.classes, **progress, "scaler": scaler, "step": step}
