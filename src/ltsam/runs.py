"""Run folders: creating them safely, and rebuilding a trained model and its data from one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ltsam.config import TrainConfig, validate
from ltsam.distributed import resolve_device
from ltsam.errors import UserError
from ltsam.extensions import load_plugins
from ltsam.io import load_checkpoint, read_json
from ltsam.methods import METHODS

RUN_MARKER = "config.json"


def prepare_run_dir(path: Path, overwrite: bool) -> None:
    """Create ``path``; an existing non-empty folder needs ``overwrite`` and must be an ltsam run."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; choose a folder name")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"run folder {path} already exists; pass --overwrite to replace it, "
                            f"--resume {path} to continue it, or choose another --out")
        if not (path / RUN_MARKER).is_file():
            raise UserError(f"{path} is not empty and is not an ltsam run folder (no {RUN_MARKER}); "
                            f"refusing to delete it — choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def checkpoint_path(target: str | Path, which: str = "best") -> Path:
    """A run folder (its ``best.pt`` or ``last.pt``) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        path = target / f"{which}.pt"
        if not path.is_file():
            raise UserError(f"{target} has no {which}.pt; is it an ltsam run folder?")
        return path
    if not target.exists():
        raise UserError(f"{target} does not exist; pass an ltsam run folder or checkpoint file")
    return target


def load_trained(target: str | Path, which: str = "best", device: str = "cpu"
                 ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """(model in eval mode, its training config, the checkpoint) from a run folder or .pt file."""
    ckpt = load_checkpoint(checkpoint_path(target, which))
    cfg = config_from_dict(ckpt["config"])
    validate(cfg)
    meta = ckpt["model_meta"]
    model = model_from_meta(meta)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not fit a {meta['arch']} model: "
                        f"{str(exc).splitlines()[0]}") from None
    model.to(resolve_device(device)).eval()
    return model, cfg, ckpt


def read_run_config(run_dir: Path) -> TrainConfig:
    cfg = config_from_dict(read_json(run_dir / RUN_MARKER))
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A saved configuration, after importing the plugins its run used (their entries and options)."""
    plugins = values.get("plugins") if isinstance(values, dict) else None
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        load_plugins(plugins)
    if not isinstance(values, dict):
        raise UserError("a run configuration must be a JSON object of settings; the file is damaged")
    return TrainConfig.from_dict(values)


def model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The architecture a checkpoint's ``model_meta`` describes (a method's models carry its heads)."""
    return METHODS.get(meta.get("method", "erm")).build_model(meta)
