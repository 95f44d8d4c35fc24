"""Training configuration: one dataclass, filled from defaults, data-set defaults, a recipe and flags."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ltsam.errors import UserError


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    imb_type: str = "exp"
    imb_factor: float = 0.01
    rand_number: int = 0
    image_size: int | None = None
    norm: str | None = None
    train_list: str | None = None
    test_list: str | None = None
    shot_split: str = "counts"  # counts: >100 / 20-100 / <20 images; index: the reference's ranges
    # model
    arch: str | None = None  # None: resnet32 (CIFAR, folders) or small_cnn (digits)
    use_norm: bool | None = None  # None: cosine head iff loss is LDAM
    # loss and re-balancing
    loss: str = "ce"
    train_rule: str = "none"
    drw_epoch: int | None = None  # None: 160 of 200, scaled with --epochs
    beta: float = 0.9999
    focal_gamma: float = 1.0
    vs_gamma: float = 0.3
    vs_tau: float = 1.0
    margin: float = 0.5
    ldam_s: float = 30.0
    # method: erm (plain losses/rules) or glmc (global/local mixture consistency, SPEC §8)
    method: str = "erm"
    resample_weighting: float = 0.2  # GLMC: second stream's sampling weights n_c^-q
    label_weighting: float = 1.0  # GLMC: label weights n_c^-gamma of the re-balanced head
    contrast_weight: float = 10.0  # GLMC: weight of the consistency loss
    mix_beta: float = 1.0  # GLMC: lambda ~ Beta(beta, beta); 1 = the reference's Uniform(0, 1)
    lt_generator: str = "standard"  # which images the LT profile keeps: standard (LDAM/paper) or glmc
    # optimisation
    optimizer: str = "sam"
    rho: float = 0.05
    rho_schedule: str = "none"
    min_rho: float = 0.05
    max_rho: float = 0.8
    rho_steps: list[float] | None = None
    adaptive: bool = False
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "step"
    momentum: float = 0.9
    wd: float = 2e-4
    # run
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    threads: int | None = None  # CPU threads; None: 1 for the small CNN (faster, and robust on busy machines)
    eval_batch_size: int = 1000
    channels_last: bool = False
    compile: bool | None = None  # None: auto (CUDA, or CPU runs long enough to repay compiling)
    amp: str | None = None  # bf16 or fp16 mixed precision (GPU)
    out: str | None = None
    recipe: str | None = None
    wandb: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_sam(self) -> bool:
        return self.optimizer == "sam" and self.rho_schedule_max() > 0

    def rho_schedule_max(self) -> float:
        if self.rho_schedule == "linear":
            return max(self.min_rho, self.max_rho)
        if self.rho_schedule == "step":
            return max(self.rho_steps or [0.6])
        return self.rho

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _typed(k, v, hints[k]) for k, v in values.items()})


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type (ints accepted as floats); a UserError otherwise.

    A hand-edited or foreign ``config.json`` then fails with one line naming the key, instead of a
    traceback somewhere deep in training.
    """
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        origin = typing.get_origin(option)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_typed(key, v, item) for v in value]
        if origin is dict and isinstance(value, dict):
            return value
    wanted = " or ".join(getattr(o, "__name__", str(o)).replace("NoneType", "null") for o in options)
    raise UserError(f"configuration key {key!r} must be {wanted}, got {value!r}; fix the config.json "
                    f"or pass the value as a flag")


# What suits each data set when the user does not say otherwise.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # The offline default: the paper's method (LDAM + DRW + SAM) sized for a CPU demo.
    "digits": dict(arch="small_cnn", loss="ldam", train_rule="drw", optimizer="sam", rho=0.05,
                   imb_factor=0.1, epochs=30, batch_size=32, lr=0.05, wd=5e-4),
    "cifar10": dict(arch="resnet32"),
    "cifar100": dict(arch="resnet32"),
    "folder": dict(arch="resnet32"),
    # The reference's ImageNet-LT / iNaturalist-2018 scripts: ResNet-50, 90 epochs, cosine LR.
    "imagenet_lt": dict(arch="resnet50", epochs=90, batch_size=256, lr_schedule="cosine", workers=4),
    "inat18": dict(arch="resnet50", epochs=90, batch_size=256, lr_schedule="cosine", workers=4),
}

LARGE_DATASETS = ("imagenet_lt", "inat18")


def native_epochs(dataset: str) -> int:
    """Length of the reference schedule whose boundaries ltsam scales: 90 (ImageNet-LT, iNat) or 200."""
    return 90 if dataset in LARGE_DATASETS else 200


def default_drw_epoch(dataset: str, epochs: int) -> int:
    """0-indexed epoch DRW switches on when --drw-epoch is not given: 160 of 200 (CIFAR) or
    60 of 90 (ImageNet-LT, iNat), scaled to ``epochs``."""
    from ltsam.schedules import scale_epoch

    native = native_epochs(dataset)
    return scale_epoch(160 if native == 200 else 60, epochs, native)


STEP_RHO_DEFAULT = [0.05, 0.1, 0.5, 0.6]  # the reference CIFAR script's hard-coded step rho values


def resolve_derived(cfg: TrainConfig) -> TrainConfig:
    """Fill the values left to ltsam (DRW switch epoch, cosine head, step-rho values), so the saved
    ``config.json`` states what the run does rather than ``null``."""
    if cfg.drw_epoch is None:
        cfg.drw_epoch = default_drw_epoch(cfg.dataset, cfg.epochs)
    if cfg.use_norm is None:
        cfg.use_norm = cfg.method == "erm" and cfg.loss == "ldam"
    if cfg.rho_steps is None and cfg.rho_schedule == "step":
        cfg.rho_steps = list(STEP_RHO_DEFAULT)
    return cfg


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Settings that are valid but almost certainly not what the user meant."""
    notes = []
    if cfg.train_rule == "drw" and cfg.drw_epoch is not None and cfg.drw_epoch >= cfg.epochs:
        notes.append(f"--drw-epoch {cfg.drw_epoch} is not below --epochs {cfg.epochs}: DRW never switches on "
                     f"and this run trains unweighted")
    return notes

CHOICES = {
    "dataset": ("digits", "cifar10", "cifar100", "folder", "imagenet_lt", "inat18"),
    "shot_split": ("counts", "index"),
    "method": ("erm", "glmc"),
    "lt_generator": ("standard", "glmc"),
    "imb_type": ("exp", "step", "none"),
    "loss": ("ce", "focal", "ldam", "vs"),
    "train_rule": ("none", "reweight", "resample", "drw"),
    "optimizer": ("sgd", "sam"),
    "rho_schedule": ("none", "linear", "step"),
    "lr_schedule": ("step", "cosine", "glmc"),
}


# GLMC's own defaults (batch 64, lr 0.01, wd 5e-3, 200 epochs, cosine; SAM rho 0.05 when on).
GLMC_DEFAULTS: dict[str, Any] = dict(batch_size=64, lr=0.01, wd=5e-3, epochs=200, momentum=0.9, lr_schedule="cosine",
                                     loss="ce", train_rule="none")
GLMC_ARCH = {"digits": "small_cnn", "cifar10": "glmc_resnet34", "cifar100": "glmc_resnet34", "folder": "glmc_resnet34",
             "imagenet_lt": "resnext50_32x4d", "inat18": "resnext50_32x4d"}


def resolve(overrides: dict[str, Any], recipe: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- data-set defaults <- (GLMC defaults) <- recipe <- explicit overrides, then validated."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(recipe)
    values.update({k: v for k, v in overrides.items() if v is not None})
    dataset = str(values.get("dataset", TrainConfig.dataset)).lower()
    merged = dict(DATASET_DEFAULTS.get(dataset, {}))
    if str(values.get("method", "erm")).lower() == "glmc":
        merged.update(GLMC_DEFAULTS, arch=GLMC_ARCH.get(dataset, "glmc_resnet34"))
        if dataset in LARGE_DATASETS:
            merged.update(lr_schedule="glmc", epochs=DATASET_DEFAULTS[dataset]["epochs"])
        if dataset == "digits":
            merged.update(epochs=30, batch_size=32, lr=0.05, wd=5e-4, imb_factor=0.1)
    merged.update(values)
    cfg = TrainConfig.from_dict(merged)
    validate(cfg)
    return resolve_derived(cfg)


# Flags that must be finite, with the smallest value each accepts (None: any finite value).
_FINITE_MIN = {"imb_factor": None, "beta": None, "focal_gamma": 0.0, "vs_gamma": None, "vs_tau": None,
               "margin": None, "ldam_s": None, "resample_weighting": None, "label_weighting": None,
               "contrast_weight": 0.0, "mix_beta": None, "rho": 0.0, "min_rho": 0.0, "max_rho": 0.0, "lr": None,
               "momentum": None, "wd": None}
# Integer flags and their smallest allowed value (seeds are numpy seeds: 0 .. 2**32 - 1).
_INT_MIN = {"rand_number": 0, "seed": 0, "eval_batch_size": 1, "threads": 1, "image_size": 1, "workers": 0,
            "epochs": 1, "batch_size": 1, "drw_epoch": 0}
_SEED_MAX = 2**32 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_numbers(cfg: TrainConfig) -> None:
    """Every float flag finite (a NaN --rho silently trained plain SGD), ints within range."""
    for key, low in _FINITE_MIN.items():
        value = getattr(cfg, key)
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise UserError(f"{_flag(key)} must be a finite number that fits float32, got {value}")
        if low is not None and value < low:
            raise UserError(f"{_flag(key)} must be non-negative, got {value}")
    for value in cfg.rho_steps or []:
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--rho-steps takes four finite non-negative values a b c d, got {cfg.rho_steps}")
    for key, low in _INT_MIN.items():
        value = getattr(cfg, key)
        if value is not None and value < low:
            raise UserError(f"{_flag(key)} must be at least {low}, got {value}")
    for key in ("seed", "rand_number"):
        if getattr(cfg, key) > _SEED_MAX:
            raise UserError(f"{_flag(key)} must lie in 0..{_SEED_MAX}, got {getattr(cfg, key)}")


def validate(cfg: TrainConfig) -> None:
    for key, options in CHOICES.items():
        value = getattr(cfg, key)
        if isinstance(value, str):
            value = value.lower()
            setattr(cfg, key, value)
        if value not in options:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"unknown {flag} {value!r}; choose one of {', '.join(options)}")
    from ltsam.models import MODELS

    archs = set(MODELS) | ({"glmc_resnet34", "glmc_resnet32"} if cfg.method == "glmc" else set())
    if cfg.arch is not None:
        cfg.arch = cfg.arch.lower()
        if cfg.arch not in archs:
            raise UserError(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(sorted(archs))}")
    if cfg.method == "glmc" and cfg.loss != "ce":
        raise UserError("--method glmc uses its own soft-target losses; drop --loss (or use --loss ce)")
    if cfg.method == "glmc" and cfg.train_rule not in ("none",):
        raise UserError("--method glmc re-balances by itself (re-sampled stream, label weights); drop --train-rule")
    _check_numbers(cfg)
    if not (0.0 < cfg.imb_factor <= 1.0):
        raise UserError(f"--imb-factor must lie in (0, 1] (smallest/largest class), got {cfg.imb_factor}")
    if cfg.rho_steps is not None and len(cfg.rho_steps) != 4:
        raise UserError(f"--rho-steps takes four non-negative values a b c d, got {cfg.rho_steps}")
    if cfg.shot_split == "index" and cfg.dataset not in LARGE_DATASETS:
        raise UserError("--shot-split index is the reference's ImageNet-LT / iNat split; use counts here")
    if cfg.amp is not None:
        cfg.amp = cfg.amp.lower()
        if cfg.amp not in ("bf16", "fp16"):
            raise UserError(f"unknown --amp {cfg.amp!r}; choose bf16 or fp16")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.wd < 0 or not (0 <= cfg.momentum < 1):
        raise UserError("--wd must be >= 0 and --momentum in [0, 1)")
    if not (0 <= cfg.beta < 1):
        raise UserError(f"--beta must lie in [0, 1), got {cfg.beta}")


def run_name(cfg: TrainConfig) -> str:
    """A readable default run-folder name."""
    if cfg.recipe:
        return cfg.recipe
    opt = f"sam{cfg.rho:g}" if cfg.uses_sam else "sgd"
    return (f"{cfg.dataset}_{cfg.arch}_{cfg.loss}_{cfg.train_rule}_{cfg.imb_type}{cfg.imb_factor:g}"
            f"_{opt}_seed{cfg.seed}")
