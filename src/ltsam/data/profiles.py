"""Long-tail imbalance profiles and the reference's choice of which images to keep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ltsam.errors import UserError

IMB_TYPES = ("exp", "step", "none")


def lt_counts(n_max: float, num_classes: int, imb_type: str, imb_factor: float) -> list[int]:
    """Images per class for an imbalance profile; class 0 is the largest.

    ``exp``:  n_c = int(n_max * f ** (c / (C - 1)))  (truncation, as the reference);
    ``step``: the first C//2 classes get int(n_max), the next C//2 get int(n_max * f);
    ``none``: every class gets int(n_max).
    f = ``imb_factor`` is the ratio of the smallest to the largest class, in (0, 1].
    """
    imb_type = imb_type.lower()
    if imb_type not in IMB_TYPES:
        raise UserError(f"unknown --imb-type {imb_type!r}; choose one of {', '.join(IMB_TYPES)}")
    if not (0.0 < imb_factor <= 1.0):
        raise UserError(f"--imb-factor must lie in (0, 1] (ratio smallest/largest), got {imb_factor}")
    if num_classes < 1:
        raise UserError(f"a data set needs at least one class, got {num_classes}")
    if imb_type == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if imb_type == "step":
        half = num_classes // 2
        counts = [int(n_max)] * half + [int(n_max * imb_factor)] * half
        # An odd class count leaves one class over; the reference silently drops it (it gets no
        # entry and then no images); we give it the minority count instead of losing the class.
        counts += [int(n_max * imb_factor)] * (num_classes - len(counts))
        return counts
    return [int(n_max)] * num_classes


def lt_indices(targets: Sequence[int] | np.ndarray, counts: Sequence[int], rand_number: int = 0
               ) -> np.ndarray:
    """Indices of the images the reference keeps, in its order (class blocks in label order).

    Procedure (``imbalance_cifar.py``): seed numpy's legacy Mersenne Twister with ``rand_number``;
    for each class in increasing label order, shuffle that class's indices (in file order) with
    ``shuffle`` and keep the first ``counts[c]``. A class with fewer images keeps all of them.
    A private ``RandomState`` gives the same stream as ``np.random.seed`` without touching the
    global generator.
    """
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.RandomState(rand_number)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        kept.append(idx[: int(n_c)])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def lt_indices_glmc(targets: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 3407) -> np.ndarray:
    """GLMC's own selection: for each class in label order, ``choice(n_class, n_c, replace=False)``
    from numpy's legacy generator seeded with ``seed`` (GLMC's --seed, 3407), indices in file order.
    A different subset than :func:`lt_indices` for the same counts."""
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        kept.append(idx[rng.choice(len(idx), min(int(n_c), len(idx)), replace=False)])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def select(targets, counts, rand_number: int, generator: str, seed: int):
    """Indices kept by the LT profile: the reference's procedure, or GLMC's (``--lt-generator glmc``)."""
    if generator == "glmc":
        return lt_indices_glmc(targets, counts, seed)
    return lt_indices(targets, counts, rand_number)


def profile_indices(targets, num_classes: int, imb_type: str, imb_factor: float, rand_number: int, *,
                    generator: str = "standard", seed: int = 0):
    """Indices the LT profile keeps: n_max = largest class, counts capped at what a class has.

    For a balanced source (CIFAR) n_max = len / C exactly as the reference computes it; ``none``
    keeps every image (a user's data that is already long-tailed stays as it is).
    """
    import numpy as np

    targets = np.asarray(targets, dtype=np.int64)
    available = np.bincount(targets, minlength=num_classes).tolist()
    if imb_type == "none":
        counts = available
    else:
        counts = lt_counts(max(available), num_classes, imb_type, imb_factor)
        counts = [min(c, a) for c, a in zip(counts, available)]
    return select(targets, counts, rand_number, generator, seed)
