"""Post-hoc logit adjustment (Menon et al., ICLR 2021): predict argmax_c z_c - tau log pi_c.

pi is the training class prior n_c / sum n of the run (``cls_num_list``, saved in its checkpoints);
tau = 0 is the plain model. ``ltsam eval RUN --logit-adjust TAU`` (or a sweep ``A:B:STEP``) uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ltsam.errors import UserError
from ltsam.losses import log_prior

MAX_TAUS = 1000  # values one sweep may score


def adjustment(cls_num_list: Sequence[int], tau: float) -> torch.Tensor:
    """The per-class offset -tau log pi_c (float64) added to the logits before the argmax."""
    return -tau * log_prior(cls_num_list)


def parse_taus(text: str, flag: str = "--logit-adjust") -> list[float]:
    """One tau (``1``), a list (``0,0.5,1``) or an inclusive range ``START:STOP:STEP`` (``0:2:0.25``)."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(map(math.isfinite, parts)):
                raise UserError(f"{flag} values must be finite numbers, got {text!r}")
            if step <= 0 or stop < start:
                raise UserError(f"{flag} {text}: a range START:STOP:STEP needs STEP > 0 and STOP >= START")
            span = (stop - start) / step  # counted before any list is built: 0:1e6:1e-6 would be 10^12 values
            if not span < MAX_TAUS:
                raise UserError(f"{flag} {text} gives {span + 1:.0f} values; use a coarser STEP (at most {MAX_TAUS} "
                                f"values)")
            count = math.floor(span + 1e-9) + 1
            taus = [round(start + i * step, 10) for i in range(count)]
        else:
            taus = [float(p) for p in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes a number, a list 0,0.5,1 or a range START:STOP:STEP such as 0:2:0.25; "
                        f"got {text!r}") from None
    if not taus or any(not math.isfinite(t) for t in taus):
        raise UserError(f"{flag} values must be finite numbers, got {text!r}")
    if len(taus) > MAX_TAUS:
        raise UserError(f"{flag} {text} gives {len(taus)} values; use a coarser STEP (at most {MAX_TAUS} values)")
    return taus
