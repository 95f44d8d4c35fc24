"""Long-tail losses (CE, Focal, LDAM, VS, logit-adjusted, Balanced Softmax) and the effective-number
class weights, in one registry.

Every loss is called as ``loss(logits, targets)`` and, given per-class ``weight``, uses PyTorch's
weighted-mean convention: sum_i w_{y_i} l_i / sum_i w_{y_i}. ``loss.per_sample(logits, targets)`` gives
the unreduced form whose mean is the loss, p_i = B w_{y_i} l_i / sum_j w_{y_j} (the SAM variants that
split the loss by class need it; ``per_sample_losses`` asks for it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltsam.errors import UserError
from ltsam.registry import Option, Registry, Settings, option_kwargs


def effective_number_weights(cls_num_list: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights w_c = (1 - beta) / (1 - beta ** n_c), rescaled so sum_c w_c = C.

    beta = 0 gives all ones (the "off" phase of DRW). (Cui et al., CVPR 2019.)
    """
    n = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    w = w / w.sum() * len(n)
    return w.to(torch.float32)


def weighted_per_sample(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """CE per sample in the weighted-mean convention: p_i = B w_{y_i} l_i / sum_j w_{y_j} (w = 1: l_i)."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    if weight is None:
        return ce
    w = weight.to(logits.dtype)[targets]
    return ce * w * (len(targets) / w.sum())


def per_sample_losses(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``criterion.per_sample(logits, targets)``; a loss without that method is a UserError."""
    fn = getattr(criterion, "per_sample", None)
    if fn is None:
        raise UserError(f"this --optimizer splits the loss by class and needs per-sample losses; "
                        f"{type(criterion).__name__} has no per_sample(logits, targets) method (add one whose "
                        f"mean is the loss)")
    return fn(logits, targets)


def _weight(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """Class weights in the logits' dtype (float64 checks, mixed precision)."""
    return None if weight is None else weight.to(logits.dtype)


def unit_weights(targets: torch.Tensor) -> torch.Tensor:
    """Every sample weighing 1 in its batch's mean (a plain mean, or a weighted one without class weights)."""
    return torch.ones(len(targets), dtype=torch.float32, device=targets.device)


class WeightedMean(nn.Module):
    """A loss that is the weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i} of its samples' losses (w: its class
    weights, 1 without): ``mean_weights(targets)`` gives each sample's w, the share of a part of the batch in the
    batch's loss (``--accumulate`` weighs its micro-batches by it)."""

    weight: torch.Tensor | None

    def mean_weights(self, targets: torch.Tensor) -> torch.Tensor:
        return unit_weights(targets) if self.weight is None else self.weight[targets]


class FocalLoss(nn.Module):
    """Focal loss as the reference: l_i = w_{y_i} CE_i, p_i = exp(-l_i), loss = mean (1-p_i)^gamma l_i.

    Note p_i comes from the *weighted* CE (an inherited quirk kept for faithful reproduction) and
    the mean is a plain batch mean, not weight-normalised.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def mean_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """A plain batch mean: every sample weighs 1 (its class weight is inside its loss)."""
        return unit_weights(targets)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(1 - p_i)^gamma l_i with l_i = w_{y_i} CE_i (its batch mean is the loss)."""
        ce = F.cross_entropy(logits, targets, weight=_weight(self.weight, logits), reduction="none")
        p = torch.exp(-ce)
        return (1.0 - p) ** self.gamma * ce


def class_counts(cls_num_list: Sequence[int], loss: str) -> torch.Tensor:
    """The training class counts in float64, refused (naming ``loss``) where a class has no image."""
    n = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    if (n <= 0).any():
        raise UserError(f"{loss} needs every class to have at least one training image")
    return n


class AdjustedLogitsLoss(WeightedMean):
    """The (weighted) cross-entropy of the logits as the subclass's ``adjusted(logits, targets)`` changes them
    (LDAM's margins, VS's scale and shift, the offsets of logit adjustment and Balanced Softmax)."""

    weight: torch.Tensor | None

    def adjusted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.adjusted(logits, targets), targets, weight=_weight(self.weight, logits))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return weighted_per_sample(self.adjusted(logits, targets), targets, self.weight)


class LDAMLoss(AdjustedLogitsLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    m_c = max_m * (n_min / n_c) ** (1/4); logits z -> s * (z - m_y e_y); then weighted CE.
    Used with the cosine (NormedLinear) head, whose logits lie in [-1, 1].
    """

    margins: torch.Tensor
    weight: torch.Tensor | None

    def __init__(self, cls_num_list: Sequence[int], max_m: float = 0.5, s: float = 30.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        n = class_counts(cls_num_list, "LDAM")
        m = 1.0 / n.pow(0.25)
        m = m * (max_m / m.max())
        self.register_buffer("margins", m.to(torch.float32))
        self.s = s
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def adjusted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shift = F.one_hot(targets, logits.shape[1]).to(logits.dtype) * self.margins.to(logits.dtype)[targets, None]
        return self.s * (logits - shift)


class VSLoss(AdjustedLogitsLoss):
    """Vector-scaling loss (Kini et al., NeurIPS 2021): z_c / Delta_c + iota_c, then weighted CE.

    Delta_c = (n_max / n_c) ** gamma (>= 1), iota_c = tau * log(n_c / sum n).
    """

    scale: torch.Tensor
    iota: torch.Tensor
    weight: torch.Tensor | None

    def __init__(self, cls_num_list: Sequence[int], gamma: float = 0.3, tau: float = 1.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        n = class_counts(cls_num_list, "VS")
        self.register_buffer("scale", (n / n.max()).pow(gamma).to(torch.float32))  # 1 / Delta_c
        self.register_buffer("iota", (tau * torch.log(n / n.sum())).to(torch.float32))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def adjusted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits * self.scale.to(logits.dtype) + self.iota.to(logits.dtype)


def log_prior(cls_num_list: Sequence[int]) -> torch.Tensor:
    """log pi_c = log(n_c / sum_k n_k), in float64: the training class prior of logit adjustment."""
    n = class_counts(cls_num_list, "logit adjustment")
    return torch.log(n / n.sum())


class ShiftedLogitsLoss(AdjustedLogitsLoss):
    """The (weighted) cross-entropy of the logits shifted by a per-class ``offset`` (a buffer, from what
    the subclass gives): CE(z + offset, y)."""

    offset: torch.Tensor
    weight: torch.Tensor | None

    def __init__(self, offset: torch.Tensor, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("offset", offset.to(torch.float32))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def adjusted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits + self.offset.to(logits.dtype)


class LogitAdjustedLoss(ShiftedLogitsLoss):
    """Logit-adjusted loss (Menon et al., ICLR 2021): CE(z + tau log pi, y), pi = n / sum n the training prior.

    Each logit z_c is shifted by tau log pi_c before the (weighted) cross-entropy, which asks the
    rare classes for a larger margin; at prediction time the raw logits z are used.
    """

    def __init__(self, cls_num_list: Sequence[int], tau: float = 1.0, weight: torch.Tensor | None = None):
        super().__init__(tau * log_prior(cls_num_list), weight)
        self.tau = tau


class BalancedSoftmaxLoss(ShiftedLogitsLoss):
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE(z + log n, y), every logit z_c shifted by log n_c.

    p(y | x) = n_y exp(z_y) / sum_c n_c exp(z_c); the same minimiser as the logit-adjusted loss at tau = 1
    (log n and log pi differ by a constant, which the softmax ignores).
    """

    def __init__(self, cls_num_list: Sequence[int], weight: torch.Tensor | None = None):
        n = class_counts(cls_num_list, "Balanced Softmax")
        super().__init__(torch.log(n), weight)


class WeightedCrossEntropy(WeightedMean):
    """Plain cross-entropy with optional per-class weights (registry name ``ce``)."""

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=_weight(self.weight, logits))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return weighted_per_sample(logits, targets, self.weight)


LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss", "loss")
"""Losses by name. An entry is called as ``obj(cls_num_list, weight=None, **options)`` and returns an
``nn.Module`` computing ``loss(logits, targets)``; ``cosine_head=True`` gives it the normalised head;
``per_sample`` / ``mean_weights``: its module has those methods (known before any data is read)."""

LOSSES.add("ce", lambda cls_num_list, weight=None: WeightedCrossEntropy(weight=weight), help="cross-entropy",
           per_sample=True, mean_weights=True)
LOSSES.add("focal", lambda cls_num_list, weight=None, focal_gamma=1.0: FocalLoss(weight, focal_gamma),
           help="focal loss", options=[Option("focal_gamma", float, 1.0, "focal loss gamma (default 1)", minimum=0.0)],
           per_sample=True, mean_weights=True)
LOSSES.add("ldam", lambda cls_num_list, weight=None, max_m=0.5, ldam_s=30.0: LDAMLoss(
    cls_num_list, max_m=max_m, s=ldam_s, weight=weight), help="label-distribution-aware margin", cosine_head=True,
    per_sample=True, mean_weights=True,
    options=[Option("margin", float, 0.5, "LDAM max margin (default 0.5)", param="max_m", above=0.0),
             Option("ldam_s", float, 30.0, "LDAM logit scale s (default 30)", above=0.0)])
LOSSES.add("vs", lambda cls_num_list, weight=None, vs_gamma=0.3, vs_tau=1.0: VSLoss(
    cls_num_list, gamma=vs_gamma, tau=vs_tau, weight=weight), help="vector scaling", per_sample=True, mean_weights=True,
    options=[Option("vs_gamma", float, 0.3, "VS loss gamma (default 0.3)", flags=("--gamma", "--vs-gamma")),
             Option("vs_tau", float, 1.0, "VS loss tau (default 1.0)", flags=("--tau", "--vs-tau"))])

LOSSES.add("la", lambda cls_num_list, weight=None, la_tau=1.0: LogitAdjustedLoss(cls_num_list, la_tau, weight),
           help="logit-adjusted CE (Menon et al., 2021)", aliases=("logit_adjusted", "logit-adjusted"),
           per_sample=True, mean_weights=True,
           options=[Option("la_tau", float, 1.0, "logit-adjusted loss: tau of CE(z + tau log prior) (default 1)",
                           minimum=0.0)])
LOSSES.add("balanced_softmax", lambda cls_num_list, weight=None: BalancedSoftmaxLoss(cls_num_list, weight),
           help="Balanced Softmax (Ren et al., 2020)", aliases=("balanced-softmax", "bsce"), per_sample=True,
           mean_weights=True)


def has_per_sample(name: str) -> bool | None:
    """Whether loss ``name`` gives per-sample losses, known before any data is read: the registration's
    ``per_sample`` flag, else a registered class's ``per_sample`` method; ``None`` when it cannot be told
    (a factory function: the check then happens when the loss is built)."""
    return _declares(name, "per_sample")


def has_mean_weights(name: str) -> bool | None:
    """Whether loss ``name`` says how its batch mean weighs samples (``mean_weights``; ``--accumulate`` needs it),
    as :func:`has_per_sample` tells."""
    return _declares(name, "mean_weights")


def _declares(name: str, method: str) -> bool | None:
    entry = LOSSES.entry(name)
    if method in entry.meta:
        return bool(entry.meta[method])
    return hasattr(entry.obj, method) if isinstance(entry.obj, type) else None


def build_loss(name: str, cls_num_list: Sequence[int], weight: torch.Tensor | None = None,
               config: Settings | None = None, **kwargs: Any) -> nn.Module:
    """A registered loss by name, its options from ``config`` (else their defaults) or ``kwargs``."""
    entry = LOSSES.entry(name)
    return entry.obj(cls_num_list, weight=weight, **(option_kwargs(entry, config) | kwargs))
