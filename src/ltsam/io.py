"""Atomic file writing and checkpoints that load anywhere (``weights_only=True``)."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from ltsam.argtypes import cut
from ltsam.errors import UserError
from ltsam.faults import fault_point

CHECKPOINT_FORMAT = "ltsam-checkpoint-v1"


def _atomic(path: Path, write) -> None:
    """Write ``path`` through a temporary file beside it, synced and renamed over it: a reader, a kill
    or a full disk leaves either the old file or the new one, never half of one. The file's mode
    follows the umask, like any other file the user creates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            fault_point(f"write:{path.name}")
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _sync_folder(path.parent)


def _create_temporary(path: Path) -> tuple[str, int]:
    """A new file ``.NAME.XXXXXXXX.tmp`` beside ``path``, opened for writing (mode 0666 less the umask;
    ``mkstemp`` would make it 0600). Orphans of a killed process are removed by ``runs.remove_orphans``."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename in it survives a power cut (best effort: not every system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` over ``dst`` atomically (``dst`` is the old file or the whole copy, never half)."""
    with open(src, "rb") as f:
        _atomic(Path(dst), lambda out: shutil.copyfileobj(f, out, 1 << 20))


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
    except RecursionError:
        raise UserError(f"{path} nests its values too deeply to be read; it is not a file ltsam wrote") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise UserError(f"{path} is not valid JSON ({cut(str(exc))}); it may be truncated — restore it "
                        f"or start the run again") from None


# A settings document (a --config file, a members file's settings, a sweep grid) is a few dozen values: these
# bounds refuse a YAML alias bomb (a few lines expanding to billions of values) or a 10^5-deep nesting in one line.
SETTINGS_MAX_VALUES = 100_000
SETTINGS_MAX_DEPTH = 32


def read_settings_file(path: str | Path, what: str) -> Any:
    """The document of a settings file, JSON (``.json``) or YAML (anything else), read safely: YAML's safe types
    only, at most :data:`SETTINGS_MAX_VALUES` values with YAML's aliases expanded (a few lines of aliases can stand
    for billions), nesting at most :data:`SETTINGS_MAX_DEPTH` levels. Whatever is wrong is one UserError line
    starting ``{what} {path}`` (``what``: how the user named the file, e.g. ``--config``, ``grid file``)."""
    import yaml

    path = Path(path)
    where = f"{what} {path}"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"{where}: cannot read it ({exc.strerror})") from None
    json_file = path.suffix.lower() == ".json"
    try:
        doc = json.loads(text) if json_file else yaml.safe_load(text)  # aliases share one value: counted below
    except RecursionError:  # the parsers recurse once per level
        raise UserError(f"{where} nests its values too deeply to be settings; give a mapping of settings") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except ValueError as exc:  # an integer of more than 4300 digits, a date YAML cannot hold
        raise UserError(f"{where} holds a value that cannot be read ({cut(str(exc))})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {cut(str(exc).splitlines()[0])}") from None
    _check_settings_size(doc, where)
    return doc


def _check_settings_size(doc: Any, where: str) -> None:
    """Refuse a document of more than :data:`SETTINGS_MAX_VALUES` values with its aliases expanded (counted, not
    expanded: the walk stops at the bound, and ends on a value that contains itself) or nested more than
    :data:`SETTINGS_MAX_DEPTH` levels deep."""
    count, stack = 0, [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > SETTINGS_MAX_VALUES:
            raise UserError(f"{where} expands to more than {SETTINGS_MAX_VALUES:,} values (YAML aliases repeating a "
                            f"part?); settings are a few dozen values — write them out")
        if depth > SETTINGS_MAX_DEPTH:
            raise UserError(f"{where} nests its values more than {SETTINGS_MAX_DEPTH} levels deep; give a "
                            f"mapping of settings")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple, set)):
            stack.extend((item, depth + 1) for item in value)


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
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "model": dict, "optimizer": dict, "model_meta": dict, "config": dict, "best_top1": (int, float)}
MODEL_META_KEYS: dict[str, type | tuple[type, ...]] = {"arch": str, "num_classes": int, "in_channels": int}


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
        probe, fd = _create_temporary(path)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({exc.strerror}); choose a writable path") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_text(path: str | Path, text: str) -> None:
    """Write text via a temporary file and a rename."""
    _atomic(Path(path), lambda f: f.write(text.encode()))
