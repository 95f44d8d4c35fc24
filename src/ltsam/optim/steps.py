"""Optimizer steps by name (``--optimizer``): SGD, SAM and ASAM, each built with its optimizer.

SAM-style steps take the frequency options of ``ltsam.optim.frequency`` (``--sam-every``, ``--sam-prob``,
``--sam-adaptive-trigger``): the ascent on some steps only, a plain step of the base optimizer otherwise.
The imbalance-aware variants (ImbSAM, Focal-SAM, SSE-SAM, CC-SAM) live in ``ltsam.optim.imbalance``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from ltsam.optim.frequency import DECIDE, PLAIN, SAMFrequency, grad_sq_norm
from ltsam.optim.frequency import OPTIONS as FREQUENCY_OPTIONS
from ltsam.optim.frequency import check_options as check_frequency
from ltsam.optim.sam import SAM
from ltsam.registry import Registry, Settings, option_kwargs


class StepLosses(NamedTuple):
    """What one evaluation of a method's objective gives the step.

    ``ascent``: the loss whose gradient SAM's perturbation follows; ``descent``: the loss whose
    gradient updates the weights; ``report``: the loss logged for the batch (detached by the step's
    caller); ``logits`` and ``targets`` (per-sample class ids) for the training accuracy, and for
    steps that weight or perturb per class.

    For steps that split the objective by class (``Step.needs_per_sample``): ``per_sample``, the
    unreduced losses p_i whose mean is ``ascent`` (under the loss's weighted-mean convention,
    p_i = B w_{y_i} l_i / sum_j w_{y_j}), and ``membership``, each sample's share of each class, (B, C)
    with rows summing to 1 (MixUp / CutMix: lam e_{y_A} + (1 - lam) e_{y_B}); None means one-hot ``targets``.
    ``descent - ascent`` is the part of the descent that no class owns (GLMC's consistency loss).
    """

    ascent: torch.Tensor
    descent: torch.Tensor
    report: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    per_sample: torch.Tensor | None = None
    membership: torch.Tensor | None = None


class StepResult(NamedTuple):
    """The objective's values at w (``first``) and, for SAM-style steps, at w + e (``last``)."""

    first: StepLosses
    last: StepLosses


Objective = Callable[[nn.Module], StepLosses]


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """What every step is built with besides its parameters and its own options, built once by the caller:
    the SGD hyperparameters, SAM's radius (``rho``; SGD ignores it) and ``adaptive`` flag, the precision
    (``autocast``, fp16 ``scaler``), the training class counts (steps that weight or perturb per class need them)
    and ``seed`` (steps that draw random numbers; None: ``build_step`` takes the configuration's, else 0)."""

    lr: float
    momentum: float
    wd: float
    rho: float = 0.05
    adaptive: bool = False
    autocast: Callable = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    cls_num_list: Sequence[int] | None = None
    seed: int | None = None

    @classmethod
    def of(cls, cfg: Any, **rest: Any) -> StepSettings:
        """A training configuration's step settings (its lr, momentum, wd, rho, adaptive and seed); ``rest``: the
        precision and class counts."""
        return cls(lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, rho=cfg.rho, adaptive=cfg.adaptive, seed=cfg.seed,
                   **rest)


_ACCUMULATED = "_ltsam_accumulated"


def mark_accumulated(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` (detached) marked as one whose gradients are already in the parameters' ``.grad``: an objective
    that took its backward passes itself (``--accumulate``'s micro-batches, a threaded pack's members)."""
    loss = loss.detach()
    setattr(loss, _ACCUMULATED, True)
    return loss


def is_accumulated(loss: torch.Tensor) -> bool:
    return bool(getattr(loss, _ACCUMULATED, False))


class Step:
    """One optimisation step on one objective. Subclasses register in ``STEPS``.

    ``perturbs`` says whether the step needs a radius (``--rho`` > 0); a step that perturbs with rho 0
    everywhere runs as plain SGD. ``needs_per_sample``: the objective must fill ``StepLosses.per_sample``.
    ``needs_class_counts``: ``create`` hands the training class counts to the constructor
    (``cls_num_list=``). ``supports_ddp``: the step may run under ``torchrun``. ``retains_graph``: it
    takes several backward passes through one forward pass.
    """

    perturbs = False
    needs_per_sample = False
    needs_class_counts = False
    supports_ddp = True
    retains_graph = False  # backward passes with retain_graph=True (a compiled model must allow them)

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        self.optimizer, self.autocast, self.scaler = optimizer, autocast, scaler

    @classmethod
    def create(cls, params: Iterable[Any], settings: StepSettings, **options: Any) -> Step:
        """The step with its optimizer: SGD with momentum and weight decay on all parameters."""
        s = settings
        opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.wd)
        return cls(opt, s.autocast, s.scaler, **_with_counts(cls, s.cls_num_list, options))

    def backward(self, loss: torch.Tensor, retain_graph: bool = False,
                 inputs: Sequence[torch.Tensor] | None = None) -> None:
        """The loss's gradients added to the parameters' (scaled under fp16). A loss an accumulating objective
        already took its micro-batches' backward passes for (:func:`is_accumulated`) adds nothing more."""
        if is_accumulated(loss):
            return
        (loss if self.scaler is None else self.scaler.scale(loss)).backward(retain_graph=retain_graph,
                                                                             inputs=inputs)

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        raise NotImplementedError

    def set_progress(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called by the trainer at each epoch start (0-indexed ``epoch``), for steps that change with it."""

    def warnings(self) -> list[str]:
        """Settings that are valid but almost certainly not what was meant; ``ltsam train`` prints them."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Step state beyond the optimizer's, saved in checkpoints (none for SGD and plain SAM)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _with_counts(cls: type[Step], cls_num_list: Sequence[int] | None, options: dict[str, Any]) -> dict[str, Any]:
    if not cls.needs_class_counts:
        return options
    if cls_num_list is None:
        raise ValueError(f"{cls.__name__} needs the training class counts (cls_num_list)")
    return dict(options, cls_num_list=[int(n) for n in cls_num_list])


STEPS: Registry[type[Step]] = Registry("optimizer step", "optimizer")


@STEPS.register("sgd", help="SGD with momentum", label="SGD", packs=True, accumulates=True)
class SGDStep(Step):
    """One forward/backward of the descent loss and one optimizer step."""

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        out = objective(model)
        self.backward(out.descent)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return StepResult(out, out)


@STEPS.register("sam", help="sharpness-aware minimisation (ASAM with --adaptive)", options=FREQUENCY_OPTIONS,
                resolve=check_frequency, label="SAM", packs=True, accumulates=True)
class SAMStep(Step):
    """Ascent pass, ``first_step``, descent pass at the perturbed weights, restore and base step.

    Both passes run in train mode, so batch-norm running statistics are updated twice per step
    (the reference's behaviour). With fp16 loss scaling the ascent needs no unscaling (SAM's
    perturbation is scale-invariant) and an overflowed ascent leaves w unperturbed; the descent
    goes through the scaler as usual.

    ``frequency`` (``SAMFrequency``; every step by default) decides which steps take the ascent; the
    others are plain steps of the base optimizer. A subclass changes the perturbed step by overriding
    ``perturbed_step``; the frequency options then apply to it too.
    """

    perturbs = True
    always_adaptive = False  # ASAM's perturbation whatever ``adaptive`` (--adaptive) says
    # After a backward of the descent loss that is also the ascent loss, the gradients are SAM's ascent
    # gradients (the trigger's pass is reused). Variants whose ascent is a part of the loss say False.
    reuses_descent_gradient = True

    def __init__(self, optimizer: torch.optim.Optimizer, autocast: Callable = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        super().__init__(optimizer, autocast, scaler)
        self.frequency = SAMFrequency()

    @classmethod
    def create(cls, params: Iterable[Any], settings: StepSettings, **options: Any) -> Step:
        s = settings
        frequency = SAMFrequency.pop_from(options, s.seed or 0)
        opt = SAM(params, torch.optim.SGD, rho=s.rho, adaptive=s.adaptive or cls.always_adaptive, lr=s.lr,
                  momentum=s.momentum, weight_decay=s.wd)
        step = cls(opt, s.autocast, s.scaler, **_with_counts(cls, s.cls_num_list, options))
        step.frequency = frequency
        return step

    @property
    def supports_ddp(self) -> bool:  # type: ignore[override]
        # The trigger may need a second backward through one forward pass, which DDP does not allow.
        return not self.frequency.trigger

    @property
    def retains_graph(self) -> bool:  # type: ignore[override]
        return self.frequency.trigger

    def set_progress(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.frequency.set_progress(epoch, epochs, steps_per_epoch)

    def __call__(self, model: nn.Module, objective: Objective) -> StepResult:
        plan = self.frequency.plan()
        if plan == PLAIN:
            return self.plain_step(model, objective)
        if plan == DECIDE:
            return self.triggered_step(model, objective)
        return self.perturbed_step(model, objective)

    def perturbed_step(self, model: nn.Module, objective: Objective, first: StepLosses | None = None,
                       ascent_grad: bool = False) -> StepResult:
        """The SAM step. ``first``: the objective at w already evaluated (its graph kept);
        ``ascent_grad``: the gradients already hold the ascent loss's gradient at w."""
        opt: SAM = self.optimizer  # type: ignore[assignment]
        if first is None:
            opt.zero_grad(set_to_none=True)
            first = objective(model)
        if not ascent_grad:
            self.backward(first.ascent)
        opt.first_step(zero_grad=True, skip_nonfinite=self.scaler is not None)
        last = objective(model)
        self.backward(last.descent)
        if self.scaler is None:
            opt.second_step(zero_grad=True)
        else:
            opt.restore()
            self.scaler.step(opt.base_optimizer)
            self.scaler.update()
            opt.zero_grad()
        return StepResult(first, last)

    def plain_step(self, model: nn.Module, objective: Objective) -> StepResult:
        """A step of the base optimizer with the descent loss's gradient at w (what ``sgd`` does)."""
        self.optimizer.zero_grad(set_to_none=True)
        out = objective(model)
        self.backward(out.descent)
        self.base_step()
        return StepResult(out, out)

    def triggered_step(self, model: nn.Module, objective: Objective) -> StepResult:
        """AE-SAM: the descent gradient at w decides; a plain step uses it, a SAM step reuses it when the
        descent loss is the ascent loss (else it keeps the graph and takes the ascent's backward)."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        first = objective(model)
        reuse = self.reuses_descent_gradient and first.descent is first.ascent
        self.backward(first.descent, retain_graph=not reuse)
        scale = 1.0 if self.scaler is None else float(self.scaler.get_scale())
        if not self.frequency.decide(grad_sq_norm(self.params(), scale)):
            self.base_step()
            return StepResult(first, first)
        if not reuse:
            opt.zero_grad(set_to_none=True)
        return self.perturbed_step(model, objective, first, ascent_grad=reuse)

    def base_step(self) -> None:
        """The base optimizer's step with the gradients as they are (through the scaler under fp16)."""
        base = self.optimizer.base_optimizer  # type: ignore[attr-defined]
        if self.scaler is None:
            base.step()
        else:
            self.scaler.step(base)
            self.scaler.update()

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        state = self.frequency.state_dict()
        return {"frequency": state} if state else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frequency.load_state_dict(state.get("frequency", {}))


@STEPS.register("asam", help="adaptive SAM (Kwon et al., 2021): SAM with --adaptive", options=FREQUENCY_OPTIONS,
                resolve=check_frequency, label="ASAM", packs=True, run_name="sam", accumulates=True)
class ASAMStep(SAMStep):
    """SAM with the scale-invariant (adaptive) perturbation e = rho T^2 g / ||T g||, T = |w|, with or without
    --adaptive."""

    always_adaptive = True


def step_run_name(name: str) -> str:
    """The step's word in a default run-folder name: its registration's ``run_name`` (ASAM's runs are named as
    SAM's, with their radius), else its name."""
    entry = STEPS.entry(name)
    return str(entry.meta.get("run_name", entry.name))


def step_label(name: str) -> str:
    """How people write the step's name (``SAM``, ``ImbSAM``): its registration's ``label``, else its name."""
    entry = STEPS.entry(name)
    return str(entry.meta.get("label", entry.name))


def build_step(name: str, params: Iterable[Any], settings: StepSettings, config: Settings | None = None) -> Step:
    """A registered step and its optimizer, built with ``settings``; the step's own options come from ``config``
    (or defaults), and so does the seed where ``settings`` names none (else 0)."""
    entry = STEPS.entry(name)
    if settings.seed is None:
        settings = replace(settings, seed=int(getattr(config, "seed", 0) or 0))
    return entry.obj.create(params, settings, **option_kwargs(entry, config))
