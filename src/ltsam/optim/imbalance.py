"""Imbalance-aware SAM on one primitive: class-weighted ascents (ImbSAM, Focal-SAM), two ascents (SSE-SAM)
and a radius per class (CC-SAM), each one registered step that works for every method (ERM, GLMC).

The primitive. With the objective's per-sample losses p_i (their mean is the method's ascent loss, under
the loss's weighted-mean convention), each sample's share m_ik of class k (one-hot of y_i; MixUp/CutMix:
lam e_{y_A} + (1 - lam) e_{y_B}), a class weight c_k and a rest weight r_k (``max(0, 1 - c_k)`` unless
the method says otherwise):

    L_asc(w)  = (1/B) sum_i (sum_k m_ik c_k) p_i(w)
    L_rest(w) = (1/B) sum_i (sum_k m_ik r_k) p_i(w) + X(w)
    e = rho grad L_asc(w) / (||grad L_asc(w)|| + 1e-12)          (--adaptive: ASAM's e)
    g = grad L_rest(w) + grad L_asc(w + e),   then the base optimizer's step with g.

X = descent - ascent is the part of the method's descent loss that no class owns (GLMC's consistency
loss; 0 for ERM), taken at w with the rest. c = 1 is SAM (computed by SAM's own step, so bit for bit).
Cost: two forward passes and three backward passes (SAM: two and two).

Variants:
- ImbSAM (Zhou et al., ICCV 2023): tail T = {k : n_k < eta}; c_k = 2 on T (the official code's factor: the
  MindSpore code's, and the PyTorch script's since its September 2023 commit), 0 elsewhere, so
  g = grad L_head(w) + 2 grad L_tail(w + e).
- Focal-SAM (Li et al., ICML 2025): c_k = lambda (1 - pi_k)^gamma with pi the training class prior and
  r_k = 1 - c_k unclamped (the official code's), so the objective is L(w) + sum_k c_k (L_k(w + e) - L_k(w)).
- SSE-SAM (Lyu et al., AAAI 2025): head H = {k : n_k >= eta} and tail T, two ascents:
  g = grad L_H(w + e_H) + grad L_T(w + e_T) + grad X(w), rho_H = --sse-head-rho until epoch gamma * epochs
  (then 0: g_H at w), rho_T = --rho (its schedule applies). The weight update is the official code's; its
  batch-norm running statistics are not: ltsam takes three train-mode passes per step, the official code four,
  and each pass updates the running statistics.
- CC-SAM (Zhou et al., CVPR 2023), as its paper states it: a radius per class,
  rho_k = rho ((n_k - 1) / (n_min - 1))^(-1/4) (the rarest class gets --rho; n - 1 floored at 1), one ascent
  per class in the batch on the per-class loss L_k = (1/B) sum_i m_ik p_i:
  g = sum_k grad L_k(w + e_k) + grad X(w). ``--cc-sam-scope classifier`` applies that formula to the
  classifier only (the scope the official code perturbs; not its per-tensor normalisation, norm-dependent
  radius or mixing of perturbed and clean losses). Cost: 1 + K forward and 2K backward passes for K classes
  in the batch, and one gradient copy per class.

Every pass is a forward of the whole batch in train mode (batch-norm statistics of the whole batch, running
statistics updated in each pass, as SAM's two passes do). These steps refuse ``torchrun``: several backward
passes through one forward are outside what DistributedDataParallel allows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.models.classifier import classifier_paths, unwrapped
from ltsam.optim.frequency import OPTIONS as FREQUENCY_OPTIONS
from ltsam.optim.frequency import check_options as check_frequency
from ltsam.optim.sam import SAM
from ltsam.optim.steps import STEPS, Objective, SAMStep, StepLosses, StepResult
from ltsam.registry import Option


def class_share(out: StepLosses, values: torch.Tensor) -> torch.Tensor:
    """Per sample, sum_k m_ik v_k: ``v[y_i]`` for one-hot samples, ``membership @ v`` for mixed ones."""
    if out.per_sample is None:
        raise UserError("this --optimizer splits the loss by class and needs the method's per-sample losses; "
                        "the method's objective gives none (StepLosses.per_sample)")
    v = values.to(device=out.per_sample.device, dtype=out.per_sample.dtype)
    if out.membership is None:
        return v[out.targets]
    return out.membership.to(v.dtype) @ v


def split_loss(out: StepLosses, values: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i (sum_k m_ik v_k) p_i: the part of the objective that class weights ``v`` select."""
    share = class_share(out, values)  # refuses losses without per-sample values
    return (share * cast(torch.Tensor, out.per_sample)).mean()


class OnDevice:
    """Per-class value vectors copied to the losses' device and dtype once, not at every step (a host-to-device
    copy from pageable memory waits for the device)."""

    def __init__(self) -> None:
        self._copies: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, values: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        if like is None:
            return values
        key = (id(values), like.device, like.dtype)
        hit = self._copies.get(key)
        if hit is None or hit[0] is not values:
            hit = (values, values.to(device=like.device, dtype=like.dtype))
            self._copies[key] = hit
        return hit[1]


def unowned(out: StepLosses) -> torch.Tensor | None:
    """X = descent - ascent (None when they are one tensor, as for ERM)."""
    return None if out.descent is out.ascent else out.descent - out.ascent


class GradBuffer:
    """Copies of the parameters' gradients kept across passes, in buffers allocated once."""

    def __init__(self) -> None:
        self._bufs: dict[torch.Tensor, torch.Tensor] = {}
        self._held: list[torch.Tensor] = []

    @torch.no_grad()
    def save(self, params: Sequence[torch.Tensor]) -> None:
        held = [p for p in params if p.grad is not None]
        bufs = []
        for p in held:
            grad = cast(torch.Tensor, p.grad)
            buf = self._bufs.get(p)
            if buf is None or buf.shape != grad.shape or buf.dtype != grad.dtype or buf.device != grad.device:
                buf = torch.empty_like(grad)
                self._bufs[p] = buf
            bufs.append(buf)
        if held:
            torch._foreach_copy_(bufs, [cast(torch.Tensor, p.grad) for p in held])
        self._held = held

    @torch.no_grad()
    def add_to(self, params: Sequence[torch.Tensor]) -> None:
        """p.grad += saved (p.grad = saved where p has no gradient)."""
        have = [p for p in self._held if p.grad is not None]
        for p in self._held:
            if p.grad is None:
                p.grad = self._bufs[p].clone()
        if have:
            torch._foreach_add_([cast(torch.Tensor, p.grad) for p in have], [self._bufs[p] for p in have])

    @torch.no_grad()
    def load_into(self, params: Sequence[torch.Tensor]) -> None:
        """p.grad = saved (None for the parameters that had no gradient)."""
        held = set(self._held)
        for p in params:
            p.grad = self._bufs[p].clone() if p in held else None


@contextlib.contextmanager
def radius(opt: SAM, value: float | None = None, factor: float = 1.0) -> Iterator[None]:
    """Every group's rho set to ``value`` (or scaled by ``factor``) for one ascent, then put back."""
    old = [g["rho"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["rho"] = value if value is not None else g["rho"] * factor
    try:
        yield
    finally:
        for g, rho in zip(opt.param_groups, old, strict=True):
            g["rho"] = rho


def tail_mask(cls_num_list: Sequence[int], eta: float) -> torch.Tensor:
    """1.0 for the classes with fewer than ``eta`` training images, else 0.0."""
    return (torch.tensor(list(cls_num_list), dtype=torch.float64) < eta).double()


class ClassWeightedSAMStep(SAMStep):
    """The primitive: one ascent on the class-weighted loss L_asc, the rest of the loss at w.

    Subclasses give ``class_weights()`` (c, one per class) and may override ``rest_weights()``.
    """

    needs_per_sample = True
    needs_class_counts = True
    supports_ddp = False
    retains_graph = True
    reuses_descent_gradient = False

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, cls_num_list: Sequence[int] = ()):
        super().__init__(optimizer, autocast, scaler)
        if not cls_num_list:
            raise ValueError(f"{type(self).__name__} needs the training class counts")
        self.cls_num_list = [int(n) for n in cls_num_list]
        self._rest, self._extra = GradBuffer(), GradBuffer()
        self._on = OnDevice()
        self._weights: tuple[torch.Tensor, torch.Tensor] | None = None

    def class_weights(self) -> torch.Tensor:
        """c, one per class (float64; cast to the losses' dtype where used)."""
        return torch.ones(len(self.cls_num_list), dtype=torch.float64)

    def rest_weights(self) -> torch.Tensor:
        """r_k = max(0, 1 - c_k): a class whose ascent weight exceeds 1 has no part at w."""
        return (1.0 - self.class_weights()).clamp_min(0.0)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, r), computed once (they depend on the class counts and the options only)."""
        if self._weights is None:
            self._weights = (self.class_weights(), self.rest_weights())
        return self._weights

    def is_sam(self) -> bool:
        """c = 1 for every class: SAM itself."""
        c, r = self.weights()
        return bool((c == 1).all()) and bool((r == 0).all())

    def perturbed_step(self, model: nn.Module, objective: Objective, first: StepLosses | None = None,
                       ascent_grad: bool = False) -> StepResult:
        if self.is_sam():
            return super().perturbed_step(model, objective, first, ascent_grad)
        return self.split_step(model, objective, first)

    def split_step(self, model: nn.Module, objective: Objective, first: StepLosses | None = None) -> StepResult:
        """g = grad L_rest(w) + grad L_asc(w + e), then the base step (the module docstring's formula)."""
        params = self.params()
        first = self._first_pass(model, objective, first)
        c, r = (self._on(v, first.per_sample) for v in self.weights())
        rest = split_loss(first, r)
        extra = unowned(first)
        self.backward(rest if extra is None else rest + extra, retain_graph=True)
        self._rest.save(params)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(split_loss(first, c))
        return self._perturbed_descent(model, objective, first, c, [self._rest])

    def _first_pass(self, model: nn.Module, objective: Objective, first: StepLosses | None) -> StepLosses:
        """The objective at w with the gradients cleared (``first`` where the caller has evaluated it already)."""
        self.optimizer.zero_grad(set_to_none=True)
        return objective(model) if first is None else first

    def _keep_unowned(self, first: StepLosses, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """X's gradient at w (the loss no class owns) kept in ``_extra``, the gradients cleared; X (None: none)."""
        extra = unowned(first)
        if extra is not None:
            self.backward(extra, retain_graph=True)
            self._extra.save(params)
            self.optimizer.zero_grad(set_to_none=True)
        return extra

    def _perturbed_descent(self, model: nn.Module, objective: Objective, first: StepLosses, part: torch.Tensor,
                           kept: Sequence[GradBuffer]) -> StepResult:
        """From the ascent gradient in the parameters: to w + e, the gradient of the loss share ``part`` there,
        back to w with the ``kept`` gradients added, and the base step."""
        opt: SAM = self.optimizer  # type: ignore[assignment]
        opt.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
        last = objective(model)
        self.backward(split_loss(last, part))
        opt.restore()
        params = self.params()
        for buffer in kept:
            buffer.add_to(params)
        return self._finish(first, last)

    def _finish(self, first: StepLosses, last: StepLosses) -> StepResult:
        """The base step with the gradients as they are, then the gradients cleared."""
        self.base_step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(first, last)


IMBSAM_OPTIONS = (
    Option("imbsam_eta", float, 20.0, "ImbSAM: classes with fewer training images form the tail (default 20)",
           minimum=0.0),
    Option("imbsam_tail_weight", float, 2.0, "ImbSAM: ascent weight of the tail loss (default 2, the official "
           "MindSpore and PyTorch code's)", minimum=0.0),
)


@STEPS.register("imbsam", help="ImbSAM (Zhou et al., ICCV 2023): SAM on the tail classes only",
                options=IMBSAM_OPTIONS + FREQUENCY_OPTIONS, resolve=check_frequency, label="ImbSAM")
class ImbSAMStep(ClassWeightedSAMStep):
    """c_k = ``imbsam_tail_weight`` for n_k < ``imbsam_eta``, else 0: g = grad L_head(w) + 2 grad L_tail(w + e)."""

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, cls_num_list: Sequence[int] = (),
                 imbsam_eta: float = 20.0, imbsam_tail_weight: float = 2.0):
        super().__init__(optimizer, autocast, scaler, cls_num_list)
        self.eta, self.tail_weight = float(imbsam_eta), float(imbsam_tail_weight)
        self._c = tail_mask(self.cls_num_list, self.eta) * self.tail_weight

    def class_weights(self) -> torch.Tensor:
        return self._c

    def warnings(self) -> list[str]:
        tail = int(tail_mask(self.cls_num_list, self.eta).sum())
        smallest = min(self.cls_num_list)
        if tail == 0:
            return [f"ImbSAM's tail set is empty: no class has fewer than --imbsam-eta {self.eta:g} training images "
                    f"(the smallest has {smallest}), so every step is plain SGD on the whole loss at ImbSAM's cost; "
                    f"raise --imbsam-eta above {smallest} to perturb the rarest classes"]
        if tail == len(self.cls_num_list):
            return [f"ImbSAM's tail set holds every class (all have fewer than --imbsam-eta {self.eta:g} images), "
                    f"so this is SAM on {self.tail_weight:g} x the loss; lower --imbsam-eta"]
        return []


FOCAL_SAM_OPTIONS = (
    Option("focal_sam_gamma", float, 3.0, "Focal-SAM: gamma of c_k = lambda (1 - pi_k)^gamma (default 3.0)",
           minimum=0.0),
    Option("focal_sam_lambda", float, 0.5, "Focal-SAM: lambda of c_k = lambda (1 - pi_k)^gamma (default 0.5)",
           minimum=0.0),
)


@STEPS.register("focal_sam", help="Focal-SAM (Li et al., ICML 2025): class-prior-weighted sharpness",
                options=FOCAL_SAM_OPTIONS + FREQUENCY_OPTIONS, resolve=check_frequency,
                label="Focal-SAM")
class FocalSAMStep(ClassWeightedSAMStep):
    """c_k = lambda (1 - pi_k)^gamma, pi_k = n_k / sum n; rest r_k = 1 - c_k (negative when c_k > 1)."""

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, cls_num_list: Sequence[int] = (),
                 focal_sam_gamma: float = 3.0, focal_sam_lambda: float = 0.5):
        super().__init__(optimizer, autocast, scaler, cls_num_list)
        n = torch.tensor(self.cls_num_list, dtype=torch.float64)
        self._c = focal_sam_lambda * (1.0 - n / n.sum()) ** focal_sam_gamma

    def class_weights(self) -> torch.Tensor:
        return self._c

    def rest_weights(self) -> torch.Tensor:
        return 1.0 - self._c


SSE_SAM_OPTIONS = (
    Option("sse_eta", float, 100.0, "SSE-SAM: classes with fewer training images form the tail (default 100)",
           minimum=0.0),
    Option("sse_head_rho", float, 0.05, "SSE-SAM: radius of the head ascent; the tail's is --rho (default 0.05)",
           minimum=0.0),
    Option("sse_gamma", float, 0.7, "SSE-SAM: the head radius is 0 from epoch gamma * epochs on (default 0.7)",
           minimum=0.0, maximum=1.0),  # the paper's gamma: the fraction of the training in the first stage
)


@STEPS.register("sse_sam", help="SSE-SAM (Lyu et al., AAAI 2025): head and tail ascents, the head's stops",
                options=SSE_SAM_OPTIONS + FREQUENCY_OPTIONS, resolve=check_frequency, label="SSE-SAM")
class SSESAMStep(ClassWeightedSAMStep):
    """g = grad L_H(w + e_H) + grad L_T(w + e_T) + grad X(w); rho_H = 0 from epoch gamma * epochs on."""

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, cls_num_list: Sequence[int] = (), *,
                 sse_eta: float = 100.0, sse_head_rho: float = 0.05, sse_gamma: float = 0.7):
        super().__init__(optimizer, autocast, scaler, cls_num_list)
        self.eta, self.head_rho, self.gamma = float(sse_eta), float(sse_head_rho), float(sse_gamma)
        self._tail = tail_mask(self.cls_num_list, self.eta)
        self._head = 1.0 - self._tail
        self.epoch, self.epochs = 0, 0
        self._head_grad, self._tail_grad = GradBuffer(), GradBuffer()

    def set_progress(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        super().set_progress(epoch, epochs, steps_per_epoch)
        self.epoch, self.epochs = epoch, epochs

    def head_radius(self) -> float:
        """rho_H, or 0 from the 0-indexed epoch gamma * epochs on (the official code's switch)."""
        return 0.0 if self.epochs and self.epoch >= self.gamma * self.epochs else self.head_rho

    def is_sam(self) -> bool:
        return False

    def warnings(self) -> list[str]:
        tail = int(self._tail.sum())
        if tail in (0, len(self.cls_num_list)):
            part = "tail" if tail == 0 else "head"
            return [f"SSE-SAM's {part} set is empty at --sse-eta {self.eta:g} (class sizes {min(self.cls_num_list)}"
                    f"..{max(self.cls_num_list)}), so one of its two ascents never moves; set --sse-eta between them"]
        return []

    def split_step(self, model: nn.Module, objective: Objective, first: StepLosses | None = None) -> StepResult:
        opt: SAM = self.optimizer  # type: ignore[assignment]
        params = self.params()
        first = self._first_pass(model, objective, first)
        tail, head = self._on(self._tail, first.per_sample), self._on(self._head, first.per_sample)
        extra = self._keep_unowned(first, params)
        self.backward(split_loss(first, tail), retain_graph=True)
        self._tail_grad.save(params)
        opt.zero_grad(set_to_none=True)
        self.backward(split_loss(first, head))
        rho_h = self.head_radius()
        if rho_h > 0:
            with radius(opt, value=rho_h):
                opt.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
            self.backward(split_loss(objective(model), head))
            opt.restore()
        self._head_grad.save(params)
        self._tail_grad.load_into(params)
        kept = [self._head_grad] if extra is None else [self._head_grad, self._extra]
        return self._perturbed_descent(model, objective, first, tail, kept)


CC_SAM_OPTIONS = (
    Option("cc_sam_scope", str, "all", "CC-SAM: the paper's per-class ascent on all weights, or on the "
           "classifier only (the official code's scope, not its other changes)", choices=("all", "classifier")),
)

def classifier_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The classifier's parameters: ``model.classifier_parameters()`` if the model has it, else those of the
    modules its ``classifier_paths`` name, in the model's own order (compiled and DDP models unwrapped)."""
    model = unwrapped(model)
    if hasattr(model, "classifier_parameters"):
        return list(model.classifier_parameters())  # type: ignore[operator]  # a method; Module.__getattr__ says Tensor
    paths = set(classifier_paths(model))
    found = [p for name, module in model.named_modules() if name in paths
             for p in module.parameters() if p.requires_grad]
    if not found:
        raise UserError(f"--cc-sam-scope classifier: this model has no classifier at {', '.join(sorted(paths))} (its "
                        f"classifier_paths); use --cc-sam-scope all")
    return found


def class_radius_factors(cls_num_list: Sequence[int]) -> torch.Tensor:
    """rho_k / rho = ((n_k - 1) / (n_min - 1))^(-1/4), n - 1 floored at 1: 1 for the rarest class."""
    m = torch.tensor([max(int(n) - 1, 1) for n in cls_num_list], dtype=torch.float64)
    return (m / m.min()).pow(-0.25)


@STEPS.register("cc_sam", help="CC-SAM (Zhou et al., CVPR 2023): one ascent per class, radius ~ (n_k - 1)^(-1/4)",
                options=CC_SAM_OPTIONS + FREQUENCY_OPTIONS, resolve=check_frequency, label="CC-SAM")
class CCSAMStep(ClassWeightedSAMStep):
    """g = sum_k grad L_k(w + e_k) + grad X(w), e_k = rho_k grad L_k / ||grad L_k|| over the classes in the batch."""

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, cls_num_list: Sequence[int] = (),
                 cc_sam_scope: str = "all"):
        super().__init__(optimizer, autocast, scaler, cls_num_list)
        if cc_sam_scope not in ("all", "classifier"):
            raise UserError(f"--cc-sam-scope must be all or classifier, got {cc_sam_scope!r}")
        self.scope = cc_sam_scope
        self.factors = class_radius_factors(self.cls_num_list)
        self._eye = torch.eye(len(self.cls_num_list), dtype=torch.float64)
        self._class_grads: dict[int, GradBuffer] = {}
        self._sum = GradBuffer()

    def is_sam(self) -> bool:
        return False

    def classes_in(self, out: StepLosses) -> list[int]:
        """The classes with a share in the batch, ascending."""
        if out.membership is None:
            return [int(k) for k in torch.unique(out.targets).tolist()]
        return [int(k) for k in torch.nonzero(out.membership.sum(0) > 0).flatten().tolist()]

    def split_step(self, model: nn.Module, objective: Objective, first: StepLosses | None = None) -> StepResult:
        opt: SAM = self.optimizer  # type: ignore[assignment]
        params = self.params()
        inputs = classifier_parameters(model) if self.scope == "classifier" else None
        first = self._first_pass(model, objective, first)
        classes = self.classes_in(first)
        eye = self._on(self._eye, first.per_sample)
        extra = self._keep_unowned(first, params)
        for j, k in enumerate(classes):
            self.backward(split_loss(first, eye[k]), retain_graph=j + 1 < len(classes), inputs=inputs)
            self._class_grads.setdefault(k, GradBuffer()).save(params)
            opt.zero_grad(set_to_none=True)
        last = first
        for j, k in enumerate(classes):
            self._class_grads[k].load_into(params)
            with radius(opt, factor=float(self.factors[k])):
                opt.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
            last = objective(model)
            self.backward(split_loss(last, eye[k]))
            opt.restore()
            if j == 0:
                self._sum.save(params)
            else:
                self._sum.add_to(params)
                self._sum.save(params)
            opt.zero_grad(set_to_none=True)
        self._sum.load_into(params)
        if extra is not None:
            self._extra.add_to(params)
        return self._finish(first, last)
