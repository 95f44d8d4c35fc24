"""argparse helpers: a parser and value types that reject bad input with one clear line (exit 2)."""

from __future__ import annotations

import argparse
import math
import reprlib
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value on one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    """An integer >= 1 (a count of images, steps, runs or a batch size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text}")
    return value


SEED_MAX = 2**32 - 1  # numpy's seeds: 0 .. 2**32 - 1


def seed(text: str) -> int:
    """A seed numpy accepts (``--seeds``): a whole number in 0 .. 2**32 - 1."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number in 0..{SEED_MAX}, got {cut(text, 40)}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {brief(text)}") from None


def lower(value: str) -> str:
    """A case-insensitive choice (``--loss LDAM`` is ``ldam``)."""
    return value.lower()


def flag_bool(text: str) -> bool:
    """A switch's value: true/false, yes/no, on/off, 1/0."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag_name(key: str) -> str:
    """The ``--flag`` of a configuration key (``imb_factor`` -> ``--imb-factor``)."""
    return "--" + key.replace("_", "-")


def as_typed(value: Any) -> str:
    """A setting's value as a user would type it (a list space-separated, floats in %g)."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 40, 40, 40
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = 4
    return r


_SHORT = _short_repr()


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` in at most ``limit`` characters, however large, deep or self-containing the value (a YAML
    alias bomb is a few lines expanding to gigabytes): how every error message shows a value the user gave."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an integer too long to print (over 4300 digits)
        text = f"<a {type(value).__name__} too long to show>"
    return cut(text, limit)


def cut(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (a parser's message may quote whole lines of the file)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
