"""Atomic file writing and checkpoints that load anywhere (``weights_only=True``)."""

from __future__ import annotations

import json
import math
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


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``.

    Python's json writes such floats as the tokens ``NaN``/``Infinity``, which are not JSON and
    break other readers (jq, JavaScript, pandas with strict parsing); ``null`` says "no value".
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def to_json(data: Any, indent: int | None = None) -> str:
    """Strict JSON text (non-finite floats as ``null``)."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON via a temporary file and a rename, so a reader never sees half a file."""
    _atomic(Path(path), lambda f: f.write((to_json(data, indent=2) + "\n").encode()))


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
    _check_keys(ckpt, path)
    return ckpt


# What every checkpoint the trainer writes holds, with the type each must have.
CHECKPOINT_KEYS = {"epoch": int, "model": dict, "optimizer": dict, "model_meta": dict, "config": dict,
                   "best_top1": (int, float)}
MODEL_META_KEYS = {"arch": str, "num_classes": int, "in_channels": int}


def _check_keys(ckpt: dict[str, Any], path: Path) -> None:
    """A checkpoint tagged as ltsam's but damaged or hand-made: one line naming what is missing."""
    for keys, where in ((CHECKPOINT_KEYS, ckpt), (MODEL_META_KEYS, ckpt.get("model_meta"))):
        if not isinstance(where, dict):
            break
        bad = [k for k, kind in keys.items() if not isinstance(where.get(k), kind)]
        if bad:
            raise UserError(f"checkpoint {path} is tagged as ltsam's but lacks valid {', '.join(bad)}; it is "
                            f"damaged or not written by ltsam train — use another last.pt/best.pt")


def check_writable_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file ltsam can write, checked before any work is done: not a folder, in an
    existing folder where a file can be created (a read-only mount fails here, not after an hour)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'results.json'}")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {parent} does not exist; create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({exc.strerror}); choose a writable path") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_text(path: str | Path, text: str) -> None:
    """Write text via a temporary file and a rename."""
    _atomic(Path(path), lambda f: f.write(text.encode()))
