"""Atomic file writing and checkpoints that load anywhere (``weights_only=True``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ltsam.errors import UserError

CHECKPOINT_FORMAT = "ltsam-checkpoint-v1"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON via a temporary file and a rename, so a reader never sees half a file."""
    _atomic(Path(path), lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); it may be truncated — restore it "
                        f"or start the run again") from None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save via a temporary file and a rename (an interrupted save keeps the old file)."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    _atomic(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an ltsam checkpoint safely; a foreign or corrupt file gives a clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run folder or a .pt file "
                        f"written by ltsam")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary by torch version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path} ({first[:160]}); the file is corrupt or "
                        f"not a PyTorch checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an ltsam checkpoint (no '{CHECKPOINT_FORMAT}' tag); "
                        f"use a last.pt/best.pt from an ltsam run folder")
    return ckpt


def write_text(path: str | Path, text: str) -> None:
    """Write text via a temporary file and a rename."""
    _atomic(Path(path), lambda f: f.write(text.encode()))
