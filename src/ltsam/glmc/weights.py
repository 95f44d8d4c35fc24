"""GLMC class weights and the cumulative-learning weight (as the reference GLMC code computes them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _power_weights(cls_num_list: Sequence[int], exponent: float) -> torch.Tensor:
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError("cls_num_list must be a non-empty list of per-class counts")
    if bool((counts <= 0).any()):
        raise ValueError(f"every class needs at least one training sample, got counts {list(cls_num_list)}")
    w = counts.pow(-float(exponent))
    return w / w.sum() * len(counts)


def label_weights(cls_num_list: Sequence[int], gamma: float) -> torch.Tensor:
    """Re-balancing label weights w_c = n_c^(-gamma), normalised so that sum_c w_c = C (float32, shape (C,)).

    ``gamma`` is the reference's ``--label_weighting`` (1.2 in its run.sh). These weight the soft targets
    of the re-balanced head ``fc_cb``: y_w = lam (w * e_A) + (1 - lam) (w * e_B).
    """
    return _power_weights(cls_num_list, gamma).float()


def resample_weights(cls_num_list: Sequence[int], q: float) -> torch.Tensor:
    """Per-class sampling weights n_c^(-q) normalised to sum C (float64, shape (C,)).

    q = 0 gives uniform sampling over instances (with replacement), q = 1 draws every class equally
    often in expectation. Index with the targets to get per-sample weights (see :func:`sample_weights`).
    """
    return _power_weights(cls_num_list, q)


def sample_weights(targets: torch.Tensor, cls_num_list: Sequence[int], q: float) -> torch.Tensor:
    """Per-sample weights of the reference's WeightedRandomSampler: resample_weights(...)[targets]."""
    return resample_weights(cls_num_list, q)[targets.long().cpu()]


def cumulative_alpha(epoch: int, epochs: int) -> float:
    """Cumulative-learning weight alpha = 1 - (epoch / epochs)^2, ``epoch`` 0-indexed.

    1.0 at the first epoch, 0.75 half-way, (1 - (199/200)^2) = 0.009975 at the last of 200 epochs.
    The objective is alpha * L_bal + (1 - alpha) * L_reb + cw * L_con.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    return 1.0 - (epoch / epochs) ** 2
