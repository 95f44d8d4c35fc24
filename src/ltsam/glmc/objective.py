"""GLMC's objective for one optimisation step, with plain SGD or SAM (the reference GLMC code's iteration).

The step gets two already augmented and normalised batches: batch A = (A1, A2, y_A) from the
instance-balanced loader and batch B = (B1, B2, y_B) from the weighted loader (truncated to |A|), and:

1. draws lam ~ Beta(beta, beta) (beta = 1: Uniform(0, 1), the reference) and one CutMix box;
2. builds X_mix = MixUp(A1, B1) and X_cut = CutMix(A2, B2) with soft targets y = lam e_A + (1 - lam) e_B
   and label-weighted soft targets y_w = lam (w * e_A) + (1 - lam) (w * e_B), the same for both mixtures;
3. forwards both in train mode; each gives (logits_fc, logits_fc_cb, z, p);
4. L_bal = CE(fc(X_mix), y_mix) + CE(fc(X_cut), y_cut); L_reb = CE(fc_cb(X_mix), y_mix_w) + CE(fc_cb(X_cut),
   y_cut_w) with CE(z, y) = -mean_i sum_c y_ic log_softmax(z_i)_c; L_con = S(p_mix, z_cut) + S(p_cut, z_mix)
   with S(p, z) = -mean_i cos(p_i, stopgrad(z_i));
5. L = alpha L_bal + (1 - alpha) L_reb + cw L_con.
   SGD: one backward of L, one optimizer step.
   SAM: backward of alpha L_bal + (1 - alpha) L_reb only (no L_con) -> first_step; both forwards again
   at the perturbed weights with the same inputs and targets, backward of the full L -> second_step.

Steps that split the loss by class (ImbSAM, Focal-SAM, SSE-SAM, CC-SAM) get per-sample losses
p_i = alpha (CE_i(fc(X_mix), y_mix) + CE_i(fc(X_cut), y_cut)) + (1 - alpha) (CE_i(fc_cb(X_mix), y_mix_w) +
CE_i(fc_cb(X_cut), y_cut_w)), whose mean is alpha L_bal + (1 - alpha) L_reb, and each mixed sample i belongs
to class y_A with share lam and to y_B with share 1 - lam (the membership is y_mix, the unweighted soft
targets, which MixUp and CutMix share); the consistency loss, owned by no class, is taken at w.

Logged: the loss is alpha L_bal + (1 - alpha) L_reb of the first pass (the reference's logged loss, both
modes); the logits are the ``fc_cb`` logits of X_mix from the first pass, for a training-accuracy proxy
against ``targets`` = y_A (the dominant label of X_mix when lam > 1/2; the reference has no exact
training accuracy for mixed inputs either).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ltsam.glmc.mixing import Box, cutmix, cutmix_box, mix_targets, mixup, sample_lambda
from ltsam.objectives import for_loss
from ltsam.optim import SAMStep, SGDStep, Step, StepLosses
from ltsam.optim.sam import SAM

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_c y_ic log_softmax(logits_i)_c (the reference's soft-target CE; targets not renormalised)."""
    return soft_cross_entropy_per_sample(logits, targets).mean()


def soft_cross_entropy_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_c y_ic log_softmax(logits_i)_c for each sample i."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """S(p, z) = -mean_i cos(p_i, z_i) with a stop-gradient on z (SimSiam-style)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class GLMCLosses(NamedTuple):
    bal: torch.Tensor    # L_bal: fc head, unweighted soft targets, MixUp + CutMix
    reb: torch.Tensor    # L_reb: fc_cb head, label-weighted soft targets, MixUp + CutMix
    con: torch.Tensor    # L_con: S(p_mix, z_cut) + S(p_cut, z_mix)
    cls: torch.Tensor    # alpha L_bal + (1 - alpha) L_reb (the SAM ascent loss; the logged loss)
    total: torch.Tensor  # cls + cw L_con
    per_sample: torch.Tensor | None = None  # cls per mixed sample (its mean is cls), when asked for


def glmc_losses(out_mix: Outputs, out_cut: Outputs, y_mix: torch.Tensor, y_mix_w: torch.Tensor,
                y_cut: torch.Tensor, y_cut_w: torch.Tensor, *, alpha: float, contrast_weight: float,
                per_sample: bool = False) -> GLMCLosses:
    """The GLMC loss parts from the two forwards' (logits_fc, logits_fc_cb, z, p) and the soft targets.

    Half-precision outputs are promoted to float32 and the targets cast to the logits' dtype.
    ``per_sample`` adds alpha (CE_i(fc mix) + CE_i(fc cut)) + (1 - alpha) (CE_i(fc_cb mix) + CE_i(fc_cb cut)).
    """
    fc_mix, cb_mix, z_mix, p_mix = (for_loss(t) for t in out_mix)
    fc_cut, cb_cut, z_cut, p_cut = (for_loss(t) for t in out_cut)
    y_mix, y_mix_w, y_cut, y_cut_w = (y.to(fc_mix.dtype) for y in (y_mix, y_mix_w, y_cut, y_cut_w))
    bal = soft_cross_entropy(fc_mix, y_mix) + soft_cross_entropy(fc_cut, y_cut)
    reb = soft_cross_entropy(cb_mix, y_mix_w) + soft_cross_entropy(cb_cut, y_cut_w)
    con = negative_cosine(p_mix, z_cut) + negative_cosine(p_cut, z_mix)
    cls = alpha * bal + (1.0 - alpha) * reb
    samples = None
    if per_sample:
        ce = soft_cross_entropy_per_sample
        samples = (alpha * (ce(fc_mix, y_mix) + ce(fc_cut, y_cut))
                   + (1.0 - alpha) * (ce(cb_mix, y_mix_w) + ce(cb_cut, y_cut_w)))
    return GLMCLosses(bal, reb, con, cls, cls + contrast_weight * con, samples)


class MixedBatch(NamedTuple):
    x_mix: torch.Tensor
    x_cut: torch.Tensor
    y_mix: torch.Tensor
    y_mix_w: torch.Tensor
    y_cut: torch.Tensor
    y_cut_w: torch.Tensor
    y_a: torch.Tensor
    lam: float
    box: Box


def mixing_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for lam and the CutMix box that depends only on (seed, epoch).

    Seeded differently from ``ltsam.data.sources.epoch_generator(seed, epoch)`` (the data stream), so
    re-seeding the step at every epoch start (``GLMCUpdate.reseed``) makes a resumed run exact.
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) % (2**63)) ^ 0x5DEECE66D)


class GLMCUpdate:
    """GLMC's update for one pair of batches: mixes them and steps the optimizer through an ``ltsam.optim``
    step on their objective; called as ``self(model, batch_a, batch_b, alpha)``, it returns a dict.

    ``optimizer`` is a ``torch.optim`` optimizer (``use_sam=False``) or an ``ltsam.optim.SAM``
    (``use_sam=True``). ``label_w`` are the (C,) label weights of ``fc_cb``'s targets. ``generator``
    (CPU) drives lam and the CutMix box; ``beta`` is the Beta(beta, beta) parameter of lam (1.0 = the
    reference). ``autocast`` (a context factory) adds mixed precision; the losses run in float32.
    ``scaler`` (a GradScaler, fp16) scales the backward passes: SAM's ascent needs no unscaling (its
    perturbation is scale-invariant) and skips a step whose gradient overflowed; the descent goes
    through the scaler. ``step`` (an ``ltsam.optim`` step over ``optimizer``) replaces the SGD/SAM
    update, e.g. by a registered SAM variant.

    The returned dict: ``loss`` (detached alpha L_bal + (1 - alpha) L_reb, first pass), ``logits``
    (detached fc_cb logits of X_mix, first pass), ``targets`` (y_A), ``bal``, ``reb``, ``con``, ``total``
    (detached, first pass) and ``lam``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, label_w: torch.Tensor, num_classes: int,
                 contrast_weight: float, generator: torch.Generator, use_sam: bool, *, beta: float = 1.0,
                 autocast: Callable = contextlib.nullcontext, scaler: torch.amp.GradScaler | None = None,
                 step: Step | None = None):
        if use_sam and not isinstance(optimizer, SAM):
            raise TypeError("use_sam=True needs an ltsam.optim.SAM optimizer")
        if not use_sam and isinstance(optimizer, SAM):
            raise TypeError("a SAM optimizer needs use_sam=True")
        if label_w.shape != (num_classes,):
            raise ValueError(f"label_w must have shape ({num_classes},), got {tuple(label_w.shape)}")
        if not beta > 0.0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.optimizer = optimizer
        self.label_w = label_w.detach().float()
        self.num_classes = num_classes
        self.contrast_weight = float(contrast_weight)
        self.generator = generator
        self.use_sam = use_sam
        self.beta = float(beta)
        self.autocast = autocast
        self.scaler = scaler
        self.step: Step = step if step is not None else (SAMStep if use_sam else SGDStep)(optimizer, autocast, scaler)

    def reseed(self, seed: int, epoch: int) -> None:
        """Replace the generator by ``mixing_generator(seed, epoch)`` (call at every epoch start)."""
        self.generator = mixing_generator(seed, epoch)

    def mix(self, batch_a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
            batch_b: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> MixedBatch:
        """The reference GLMC step's first steps: truncate B to |A|, draw lam and the box, mix inputs, targets."""
        a1, a2, y_a = batch_a
        b1, b2, y_b = batch_b
        n = len(y_a)
        if len(y_b) < n:
            raise ValueError(f"batch B has {len(y_b)} samples, fewer than batch A's {n}")
        b1, b2, y_b = b1[:n], b2[:n], y_b[:n]
        lam = sample_lambda(self.generator, self.beta)
        x_mix = mixup(a1, b1, lam)
        box = cutmix_box(a2.shape[2], a2.shape[3], lam, self.generator)
        x_cut = cutmix(a2, b2, box)
        w = self.label_w.to(y_a.device)
        y_mix = mix_targets(y_a, y_b, lam, self.num_classes)
        y_mix_w = mix_targets(y_a, y_b, lam, self.num_classes, w)
        # CutMix targets use the same lam as MixUp (the reference; no box-area correction).
        return MixedBatch(x_mix, x_cut, y_mix, y_mix_w, y_mix, y_mix_w, y_a, lam, box)

    def _losses(self, model: nn.Module, m: MixedBatch, alpha: float) -> tuple[GLMCLosses, torch.Tensor]:
        with self.autocast():
            out_mix = model(m.x_mix)
            out_cut = model(m.x_cut)
        if not isinstance(out_mix, tuple) or len(out_mix) != 4:
            raise TypeError("the GLMC step needs a train-mode GLMCNet returning (fc, fc_cb, z, p)")
        losses = glmc_losses(out_mix, out_cut, m.y_mix, m.y_mix_w, m.y_cut, m.y_cut_w, alpha=alpha,
                             contrast_weight=self.contrast_weight, per_sample=self.step.needs_per_sample)
        return losses, out_mix[1]

    def update(self, model: nn.Module, m: MixedBatch, alpha: float) -> dict:
        """Steps 6-10: forwards, losses, backward(s) and the optimizer update on a mixed batch.

        GLMC's objective: SAM's ascent follows alpha L_bal + (1 - alpha) L_reb (no L_con), the descent
        the full L; the update is the shared ``ltsam.optim`` step.
        """
        passes: list[GLMCLosses] = []

        def objective(net: nn.Module) -> StepLosses:
            losses, logits = self._losses(net, m, alpha)
            passes.append(losses)
            return StepLosses(losses.cls, losses.total, losses.cls, logits, m.y_a, losses.per_sample,
                              m.y_mix if losses.per_sample is not None else None)

        first = self.step(model, objective).first
        parts = passes[0]
        return {"loss": first.report.detach(), "logits": first.logits.detach(), "targets": m.y_a,
                "bal": parts.bal.detach(), "reb": parts.reb.detach(), "con": parts.con.detach(),
                "total": parts.total.detach(), "lam": m.lam}

    def __call__(self, model: nn.Module, batch_a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 batch_b: tuple[torch.Tensor, torch.Tensor, torch.Tensor], alpha: float) -> dict:
        return self.update(model, self.mix(batch_a, batch_b), alpha)
