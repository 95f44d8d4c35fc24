"""What the ``timm:`` and ``clip:`` loaders share about weights: the errors a bad file raises (refused in one line),
the check that a file fitted the model (a non-strict load must not leave the backbone random), and quick hub
access (an unreachable hub fails in seconds, not after a minute of retries).

Files are read by the libraries' own loaders, which never run code: ``torch.load(weights_only=True)`` or
safetensors.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from torch import nn

from ltsam.errors import UserError

T = TypeVar("T")

PROBE_TIMEOUT_S = 3.0
"""How long the hub's host may take to accept a connection before ltsam loads from the local cache only."""


def load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a weights file that is not what it claims raises while it is read or loaded: a truncated or
    garbage safetensors or pickle file, a pickle that needs code (refused by ``weights_only``), keys or shapes that
    do not fit."""
    errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError, KeyError, EOFError, StopIteration,
                                               pickle.UnpicklingError, AssertionError)
    try:
        from safetensors import SafetensorError
    except ImportError:  # safetensors is part of the extra; without it no .safetensors file is read
        return errors
    return (*errors, SafetensorError)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The informative first line of ``exc``'s message (PyTorch's load errors start with a header line: the
    line after it names the key), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@contextmanager
def load_report(builder: Any) -> Iterator[list[tuple[list[str], list[str]]]]:
    """While inside: every ``builder.load_pretrained(model, ...)`` call (timm's loader, which loads non-strictly
    once the classifier is replaced) records the (missing, unexpected) keys of its ``load_state_dict``."""
    original = builder.load_pretrained
    seen: list[tuple[list[str], list[str]]] = []

    def record(module: nn.Module, keys: Any) -> None:
        seen.append((list(keys.missing_keys), list(keys.unexpected_keys)))

    def load(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        handle = model.register_load_state_dict_post_hook(record)
        try:
            return original(model, *args, **kwargs)
        finally:
            handle.remove()

    builder.load_pretrained = load
    try:
        yield seen
    finally:
        builder.load_pretrained = original


def check_fitted(net: nn.Module, head: str, report: list[tuple[list[str], list[str]]], what: str) -> None:
    """One line unless the load ``report`` (of :func:`load_report`) matched every tensor of ``net`` outside its
    classifier ``head`` and left nothing of the file unused: ``what`` names the file and the model."""
    if not report:  # the model's own loader (a .npz): it reads the keys it needs and fails on a missing one
        return
    missing, unexpected = report[-1]
    outside = [k for k in missing if not _in_head(k, head)]
    unused = [k for k in unexpected if not _in_head(k, head)]
    if not outside and not unused:
        return
    total = sum(1 for k in net.state_dict() if not _in_head(k, head))
    own = set(net.state_dict())
    if any(k.startswith("net.") and k[4:] in own for k in unused):
        cause = ("it is an ltsam checkpoint (keys 'net.…'): `ltsam train --resume RUN` continues that run, "
                 "`ltsam finetune RUN` and `ltsam eval RUN` use it; to start a new run from its weights save its "
                 "'model' entries under 'net.' without that prefix (a --tune full run's)")
    else:
        cause = "it holds another architecture's weights, or a state dict under other names"
    example = f"missing {outside[0]!r}" if outside else f"unused {unused[0]!r}"
    raise UserError(f"--pretrained {what}: only {total - len(outside)} of the backbone's {total} tensors are in the "
                    f"file, {len(unused)} of its tensors fit nothing (e.g. {example}); {cause}")


def _in_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def _probe_target() -> tuple[str, int] | None:
    """The (host, port) a hub download connects to first: the proxy's if one is set, else the hub endpoint's."""
    from huggingface_hub import constants

    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None)
    parts = urlsplit(proxy or constants.ENDPOINT)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def reachable(target: tuple[str, int], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``target`` (host, port) accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection(target, timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_access() -> Iterator[str | None]:
    """While inside, a hub that cannot be reached within seconds puts huggingface_hub (timm's and open_clip's
    source) in offline mode: cached weights load, uncached ones fail at once instead of after its retries (about
    25 s per file, two files a model). Yields the ``host:port`` that did not answer (None: reachable, or not
    probed)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # the libraries then fetch from their URLs (no retries)
        yield None
        return
    target = None if constants.HF_HUB_OFFLINE else _probe_target()
    if target is None or reachable(target):
        yield None
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield f"{target[0]}:{target[1]}"
    finally:
        constants.HF_HUB_OFFLINE = False


def fetched(make: Callable[[], T], what: str, errors: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """``make()``, a load from the hub, under :func:`hub_access`; its failure (one of ``errors``: OSError covers
    huggingface_hub's and urllib's) is one line naming ``what`` and the offline choices."""
    with hub_access() as down:
        try:
            return make()
        except errors as exc:  # hub unreachable, not cached
            why = (f"the hub ({down}) did not answer within {PROBE_TIMEOUT_S:g} s and they are not in the local "
                   f"cache" if down else f"{type(exc).__name__}: {first_line(exc, 160)}")
            raise UserError(f"cannot fetch {what} ({why}); without network pass --pretrained PATH (a state-dict "
                            f".pt / .safetensors file) or --pretrained none") from None
