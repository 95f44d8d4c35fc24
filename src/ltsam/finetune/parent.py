"""What a stage run starts from: its settings (the stage run's ``config.json``) and its parent, a finished
run's checkpoint with its configuration and where it came from."""

from __future__ import annotations

import hashlib
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

from ltsam.config import TrainConfig, validate
from ltsam.errors import UserError
from ltsam.io import load_checkpoint
from ltsam.run.files import CONFIG_NAME
from ltsam.runs import checkpoint_path, config_from_dict


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class StageSettings:
    """What ``config.json`` of a stage run records: the stage, its options, the parent and the run settings."""

    stage: str
    options: dict[str, Any]
    parent: dict[str, Any]  # path (the checkpoint), run (its folder or null), which, sha256, epoch
    _: KW_ONLY
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    data_root: str | None = None
    recipe: str | None = None
    plugins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> StageSettings:
        if not isinstance(values, dict) or "stage" not in values or "parent" not in values:
            raise UserError("this config.json is not a stage run's (no 'stage' and 'parent'); resume a training "
                            "run with `ltsam train --resume RUN`")
        known = {f for f in cls.__dataclass_fields__}
        settings = cls(**{k: v for k, v in values.items() if k in known})
        settings._check()
        return settings

    def _check(self) -> None:
        """A damaged or hand-edited config.json: one line naming the bad entry, before anything uses it."""
        parent = self.parent if isinstance(self.parent, dict) else {}
        bad = [name for name, ok in (
            ("stage", isinstance(self.stage, str)), ("options", isinstance(self.options, dict)),
            ("parent", all(isinstance(parent.get(k), str) for k in ("path", "which", "sha256"))),
            ("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool)),
            ("device", isinstance(self.device, str)),
            ("workers", self.workers is None or isinstance(self.workers, int) and not isinstance(self.workers, bool)),
            ("data_root", self.data_root is None or isinstance(self.data_root, str)),
            ("recipe", self.recipe is None or isinstance(self.recipe, str)),
            ("plugins", isinstance(self.plugins, list) and all(isinstance(m, str) for m in self.plugins))) if not ok]
        if bad:
            raise UserError(f"the stage run's config.json has invalid {', '.join(bad)}; it is damaged — restore it, "
                            f"or start the stage again with --overwrite")


@dataclass
class Parent:
    """A finished run's checkpoint, its configuration and where it came from."""

    ckpt: dict[str, Any]
    cfg: TrainConfig
    info: dict[str, Any]


def load_parent(target: str | Path, which: str = "last", expect_sha256: str | None = None) -> Parent:
    """The parent run (a run folder's ``last.pt``/``best.pt``, or a checkpoint file) and its configuration;
    ``expect_sha256`` (on resume) refuses a checkpoint that changed since the stage started."""
    path = checkpoint_path(target, which).resolve()
    ckpt = load_checkpoint(path)
    sha = file_sha256(path)
    if expect_sha256 is not None and sha != expect_sha256:
        raise UserError(f"the parent checkpoint {path} changed since this stage started (SHA-256 differs); "
                        f"start the stage again (--overwrite) instead of resuming it")
    cfg = config_from_dict(ckpt["config"])
    validate(cfg)
    run = path.parent if (path.parent / CONFIG_NAME).is_file() else None
    info = {"path": str(path), "run": None if run is None else str(run), "which": which, "sha256": sha,
            "epoch": int(ckpt["epoch"])}
    return Parent(ckpt, cfg, info)
