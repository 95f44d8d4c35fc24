"""The held-out validation split: a seeded, class-balanced set of training-source images.

Selection on the test set (the paper's "best epoch") overstates accuracy; a validation set drawn
from the training source lets a run pick its epoch on data it neither trains nor is tested on.

Two pools, by the kind of data set:

- ``discarded`` (sets that draw their long-tail profile from a balanced source: CIFAR, digits): the
  images the profile leaves out. The training set stays exactly the one drawn without the split, and
  the training run is the same number for number. A class the profile keeps whole (CIFAR-10-LT's
  head class keeps 5,000 of 5,000) has fewer (or no) images to give: it gets ``min(N, left out)``.
- ``train`` (image folders, list files): ``min(N, n_c - 1)`` images of each class are held out of the
  training images before the profile is drawn (one stays for training); the training set is then
  drawn from the rest, so it differs from the one drawn without the split.

The draw is seeded by ``rand_number`` (the seed that picks the long-tail images), not by the training
seed, so every seed of a sweep sees the same split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ltsam.errors import UserError

_STREAM = 0x7A1  # keeps the validation draw apart from the long-tail profile's stream of the same seed


def check_request(per_class: int, fraction: float, val_list: str | None = None) -> None:
    """At most one source of validation images, each in range: ``per_class`` >= 0, ``fraction`` in [0, 1)."""
    given = [flag for flag, v in (("--val-per-class", per_class), ("--val-fraction", fraction),
                                  ("--val-list", val_list)) if v]
    if len(given) > 1:
        raise UserError(f"give one of {', '.join(given)}: each is a validation split on its own")
    if per_class < 0:
        raise UserError(f"--val-per-class must be at least 0, got {per_class}")
    if not math.isfinite(fraction) or not (0.0 <= fraction < 1.0):
        raise UserError(f"--val-fraction must lie in [0, 1), got {fraction}")


def val_count(per_class: int, fraction: float, available: Sequence[int]) -> int:
    """Images per class to hold out: ``per_class``, or ``floor(fraction * min_c available_c)`` (the
    smallest class of the full training source), or 0 for no validation set."""
    check_request(per_class, fraction)
    if per_class:
        return int(per_class)
    if not fraction:
        return 0
    n = int(math.floor(fraction * min(available)))
    if n < 1:
        raise UserError(f"--val-fraction {fraction:g} holds out no image: the smallest class has {min(available)} "
                        f"images; raise it or pass --val-per-class N")
    return n


def draw_validation(targets: Sequence[int] | np.ndarray, candidates: np.ndarray, num_classes: int, n: int,
                    seed: int, keep_one: bool = False) -> np.ndarray:
    """Indices (into ``targets``) of the validation images, sorted.

    For each class in label order, ``min(n, m_c)`` of its ``m_c`` candidate indices (``m_c - 1`` with
    ``keep_one``) chosen without replacement by ``numpy.random.default_rng([0x7A1, seed]).choice``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    candidates = np.sort(np.asarray(candidates, dtype=np.int64))
    rng = np.random.default_rng([_STREAM, int(seed)])
    chosen = []
    for c in range(num_classes):
        pool = candidates[targets[candidates] == c]
        take = min(n, max(len(pool) - (1 if keep_one else 0), 0))
        chosen.append(pool[rng.choice(len(pool), take, replace=False)] if take else pool[:0])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def complement(size: int, indices: np.ndarray) -> np.ndarray:
    """``0..size-1`` without ``indices``, in order."""
    mask = np.ones(size, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def describe(n: int, counts: Sequence[int], classes: Sequence[str], pool: str) -> str:
    """One line for the start of a run: what was held out, from where, and which classes fell short."""
    where = ("from the images the long-tail profile leaves out (training set unchanged)" if pool == "discarded"
             else "from the training images before the long-tail profile is drawn")
    short = [f"{classes[c]} ({k})" for c, k in enumerate(counts) if k < n]
    text = f"validation: {sum(counts)} images, {n} per class, {where}"
    if short:
        text += (f"; fewer for {len(short)} class(es) with too few images to give: {', '.join(short[:6])}"
                 + (", ..." if len(short) > 6 else ""))
    return text
