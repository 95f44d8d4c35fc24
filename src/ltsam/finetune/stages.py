"""Second stages on a finished run (``ltsam finetune RUN --stage NAME``), one class each, in ``STAGES``.

A stage takes the parent's model with every parameter frozen and the backbone in eval mode (its
weights and batch-norm statistics stay bit-identical), puts a head in place of the classifier
(``install``), and either trains that head for a few epochs or, ``trains = False``, only transforms
it. ``folded`` turns the head back into a plain classifier, so the stage's checkpoints hold the
parent's architecture. Register a new stage like any other entry::

    @STAGES.register("mine", help="...", options=[Option("epochs", int, 5, "...")])
    class Mine(Stage): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from ltsam.argtypes import flag_name
from ltsam.errors import UserError
from ltsam.finetune.heads import MaxNorm, ScaledLinear, get_head, head_shape, set_module
from ltsam.losses import WeightedCrossEntropy, effective_number_weights
from ltsam.registry import Entry, Option, Registry


class StageRun(Protocol):
    """What a stage without epochs may use of the run that hosts it (``ltsam.finetune.runner.StageRunner``)."""

    stage: Stage
    data: Any  # ltsam.data.lt_data.LTData
    cfg: Any  # the parent's TrainConfig
    ctx: Any  # ltsam.distributed.DistContext
    device: torch.device
    model: nn.Module
    path: str
    autocast: Any
    groups: dict[str, list[int]] | None
    state: Any  # ltsam.run.records.Progress
    run_dir: Path
    progress: bool

    @property
    def head(self) -> nn.Module: ...
    def test_batches(self) -> Any: ...
    def payload(self, epoch: int) -> dict[str, Any]: ...
    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]: ...


STAGES: Registry[type[Stage]] = Registry("stage", "stage")
"""Second stages by name: ``obj(**options)`` is a ``Stage``; its options become ``ltsam finetune`` flags."""


def _epochs(default: int) -> Option:
    return Option("epochs", int, default, "epochs of the stage", minimum=1)


def _lr(default: float) -> Option:
    return Option("lr", float, default, "peak learning rate (cosine to 0 over the stage)", minimum=0.0)


def _wd(default: float) -> Option:
    return Option("wd", float, default, "weight decay", flags=("--wd", "--weight-decay"), minimum=0.0)


def batch_size_option(default: int) -> Option:
    return Option("batch_size", int, default, "batch size", flags=("--batch-size", "-b"), minimum=1)


MOMENTUM = Option("momentum", float, 0.9, "SGD momentum", minimum=0.0, below=1.0)


class Stage:
    """A second stage. The base trains the installed head with SGD (momentum, weight decay), a cosine LR
    per epoch and plain cross-entropy, on class-balanced batches (``balanced``)."""

    trains = True
    balanced = True  # class-balanced sampling (weights 1 / n_c); False: the shuffled instance stream

    def __init__(self, epochs: int = 10, lr: float = 0.1, wd: float = 5e-4, momentum: float = 0.9,
                 batch_size: int = 128, **options: Any):
        self.epochs, self.lr, self.wd, self.momentum, self.batch_size = epochs, lr, wd, momentum, batch_size
        self.options = options

    def check(self, head: nn.Module) -> None:
        """Refuse a parent head the stage cannot work on (raise ``UserError``)."""
        if not isinstance(head, nn.Linear):
            raise UserError(f"--stage {self.name} needs a linear classifier; this run has a cosine head (the "
                            f"LDAM loss's), whose class vectors are normalised already — use --stage crt, which "
                            f"trains a new linear classifier on the frozen features")

    @property
    def name(self) -> str:
        return getattr(self, "stage_name", type(self).__name__)

    def install(self, model: nn.Module, path: str) -> list[nn.Parameter]:
        """Put the trainable head in place of the classifier at ``path``; return the parameters to train."""
        raise NotImplementedError

    def folded(self, head: nn.Module) -> nn.Module:
        """The installed head as a plain classifier (what the checkpoints and ``ltsam eval`` use)."""
        return head

    def output_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The ``model_meta`` of the stage's model (the parent's, unless the head type changes)."""
        return dict(meta)

    def criterion(self, cls_num_list: Sequence[int]) -> nn.Module:
        return WeightedCrossEntropy()

    def fit_without_epochs(self, run: StageRun) -> dict[str, Any]:
        """A stage with ``trains = False`` runs here instead of the epoch loop (tau-norm's sweep); it returns
        the run's summary (``run.finish``)."""
        raise NotImplementedError(f"{type(self).__name__} trains no epochs, so it must define fit_without_epochs")

    def after_step(self, head: nn.Module) -> None:
        """Called after every optimizer step (projections)."""


@STAGES.register("crt", help="classifier re-training: backbone frozen, classifier re-initialised, class-balanced",
                 options=[_epochs(10), _lr(0.2), _wd(5e-4), MOMENTUM, batch_size_option(512)])
class ClassifierRetraining(Stage):
    """cRT (Kang et al., ICLR 2020): a new linear classifier (PyTorch's default initialisation) trained with
    cross-entropy on class-balanced batches of the frozen features. A cosine (LDAM) parent gets a linear head."""

    def check(self, head: nn.Module) -> None:
        pass

    def install(self, model: nn.Module, path: str) -> list[nn.Parameter]:
        d, c = head_shape(get_head(model, path))
        device = next(model.parameters()).device
        head = nn.Linear(d, c).to(device)
        set_module(model, path, head)
        return list(head.parameters())

    def output_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        linear = {k: v for k, v in meta.items() if k != "head_scale"}  # the cosine head's scale goes with it
        return dict(linear, use_norm=False) if "use_norm" in meta else linear


@STAGES.register("lws", help="learnable weight scaling: only a per-class scale f_k of w_k learned, class-balanced",
                 options=[_epochs(5), _lr(0.2), _wd(5e-4), MOMENTUM, batch_size_option(512)])
class LearnableWeightScaling(Stage):
    """LWS (Kang et al., ICLR 2020): logits f_k (w_k . x + b_k), the parent's w and b frozen, f learned from 1
    with cross-entropy on class-balanced batches; folded into the classifier as f_k w_k, f_k b_k."""

    def install(self, model: nn.Module, path: str) -> list[nn.Parameter]:
        head = ScaledLinear(get_head(model, path))
        set_module(model, path, head)
        return [head.scales]

    def folded(self, head: nn.Module) -> nn.Module:
        return head.folded()  # type: ignore[operator]


@STAGES.register("weight-balancing", help="weight balancing stage 2: class-balanced loss, MaxNorm, weight decay 0.1",
                 options=[_epochs(10), _lr(0.01), _wd(0.1), MOMENTUM, batch_size_option(64),
                          Option("maxnorm_thresh", float, 0.1, "weight balancing: MaxNorm cap at min + t (max - min) "
                                 "of the parent's class-vector norms (default 0.1)", minimum=0.0),
                          Option("beta", float, 0.9999, "weight balancing: effective-number beta of the class-balanced "
                                 "loss (default 0.9999)", minimum=0.0, below=1.0)],
                 aliases=("weight_balancing", "wb"))
class WeightBalancing(Stage):
    """Weight balancing's second stage (Alshammari et al., CVPR 2022): the parent's classifier (weights and
    bias) fine-tuned with the class-balanced loss (CE weighted by effective numbers, Cui et al.) on the
    shuffled instance stream, weight decay 0.1, and MaxNorm projected after every step."""

    balanced = False

    def __init__(self, maxnorm_thresh: float = 0.1, beta: float = 0.9999, **options: Any):
        super().__init__(**options)
        self.thresh, self.beta = maxnorm_thresh, beta
        self.maxnorm: MaxNorm | None = None

    def install(self, model: nn.Module, path: str) -> list[nn.Parameter]:
        head = get_head(model, path)
        head.requires_grad_(True)
        self.maxnorm = MaxNorm(head.weight, self.thresh)
        return list(head.parameters())

    def criterion(self, cls_num_list: Sequence[int]) -> nn.Module:
        return WeightedCrossEntropy(effective_number_weights(cls_num_list, self.beta))

    def fit_without_epochs(self, run: StageRun) -> dict[str, Any]:
        """A stage with ``trains = False`` runs here instead of the epoch loop (tau-norm's sweep); it returns
        the run's summary (``run.finish``)."""
        raise NotImplementedError(f"{type(self).__name__} trains no epochs, so it must define fit_without_epochs")

    def after_step(self, head: nn.Module) -> None:
        assert self.maxnorm is not None
        self.maxnorm.project(cast(torch.Tensor, head.weight))


def stage_options(entry: Entry[type[Stage]], given: dict[str, Any]) -> dict[str, Any]:
    """The stage's option values: its declared defaults, overridden by the ``given`` values that are not None.

    A value given for an option the stage does not declare is a UserError naming the stage's options.
    """
    declared = {o.name: o for o in entry.options}
    foreign = [k for k, v in given.items() if v is not None and k not in declared]
    if foreign:
        names = ", ".join(o.flag for o in entry.options) or "none"
        raise UserError(f"--stage {entry.name} has no option {', '.join(map(flag_name, foreign))}"
                        f"; its options: {names}")
    return {name: (given[name] if given.get(name) is not None else o.default) for name, o in declared.items()}


def build_stage(name: str, given: dict[str, Any] | None = None) -> Stage:
    """A registered stage by name with its options (``given`` values over the declared defaults)."""
    entry = STAGES.entry(name)
    values = stage_options(entry, given or {})
    stage = entry.obj(**{o.keyword: values[o.name] for o in entry.options})
    stage.stage_name = entry.name  # type: ignore[attr-defined]
    return stage


def balanced_weights(cls_num_list: Sequence[int]) -> torch.Tensor:
    """Per-class sampling weights 1 / n_c: each class drawn equally often (cRT's and LWS's sampler)."""
    return 1.0 / torch.tensor(list(cls_num_list), dtype=torch.float64)
