"""Training configuration: one dataclass, filled from defaults, data-set and method defaults, a recipe
and flags; every name and option checked against the registries (``ltsam.extensions``)."""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ltsam.argtypes import SEED_MAX, brief, flag_name
from ltsam.data.catalog import DATASETS
from ltsam.data.validation import check_request
from ltsam.errors import UserError
from ltsam.extensions import REGISTRIES, all_options
from ltsam.losses import LOSSES
from ltsam.methods import METHODS, uses_cosine_head
from ltsam.models import MODELS
from ltsam.optim import STEPS
from ltsam.optim.steps import step_run_name
from ltsam.registry import Option


@dataclass(kw_only=True)
class TrainConfig:
    """The settings of a run. Registered entries (losses, rules, steps, methods, ...) add their own
    options; those live in ``options`` and read like fields (``cfg.margin``), and ``config.json`` holds
    them flat beside the fields."""

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
    lt_generator: str = "standard"  # which images the LT profile keeps: standard (LDAM/paper) or glmc
    val_per_class: int = 0  # validation images held out per class (0: none; ltsam.data.validation)
    val_fraction: float = 0.0  # or this fraction of the smallest class's images, per class
    val_list: str | None = None  # or a list file of validation images (list-file sets: ImageNet-LT's val list)
    # model
    arch: str | None = None  # None: the data set's (or method's) default
    use_norm: bool | None = None  # None: cosine head iff the loss asks for it (LDAM)
    head_scale: float = 1.0  # the cosine head's logit scale s (logits = s cos); LDAM scales in its loss instead
    # method, loss and re-balancing
    method: str = "erm"
    loss: str = "ce"
    train_rule: str = "none"
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
    accumulate: int = 1  # micro-batches per batch (gradient accumulation; --accumulate)
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
    eval_every: int = 1  # test (and validation) images evaluated every K epochs and each of the last 10 %
    # (ltsam.epoch_settings.evaluated)
    channels_last: bool = False
    compile: bool | None = None  # None: auto (CUDA, or CPU runs long enough to repay compiling)
    amp: str | None = None  # bf16 or fp16 mixed precision (GPU)
    out: str | None = None
    recipe: str | None = None
    wandb: bool = False
    plugins: list[str] = field(default_factory=list)  # modules imported for this run's entries
    pack: dict[str, Any] | None = None  # the pack it trained in (ltsam.pack): its folder, size, member index
    extra: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # registered entries' options, by config key

    def __post_init__(self) -> None:
        for name, option in all_options().items():
            self.options.setdefault(name, option.default)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"TrainConfig has no field or registered option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"this configuration is frozen (its run has started); cannot set {name!r} — "
                                 f"change a copy: dataclasses.replace(cfg, ...)")
        if name in _FIELDS:
            object.__setattr__(self, name, value)
        elif name in self.__dict__.get("options", {}) or name in all_options():
            self.options[name] = value
        else:
            raise AttributeError(f"TrainConfig has no field or registered option {name!r}")

    def freeze(self) -> TrainConfig:
        """Refuse every later change: the settings a run started with are the ones its ``config.json`` states."""
        self.__dict__["_frozen"] = True
        return self

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))

    @property
    def uses_sam(self) -> bool:
        """A perturbing step (SAM and its variants) with a radius above 0 somewhere in the run."""
        return STEPS.entry(self.optimizer).obj.perturbs and self.rho_schedule_max() > 0

    def rho_schedule_max(self) -> float:
        if self.rho_schedule == "linear":
            return max(self.min_rho, self.max_rho)
        if self.rho_schedule == "step":
            return max(self.rho_steps or [0.6])
        return self.rho

    def to_dict(self) -> dict[str, Any]:
        """Fields and options, flat (the ``config.json`` layout)."""
        values = {f: copy.deepcopy(getattr(self, f)) for f in _FIELDS if f != "options"}
        return values | copy.deepcopy(self.options)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = all_options()
        unknown = sorted(set(values) - set(_FIELDS) - set(known))
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(unknown)} (a plugin's options need the "
                            f"plugin: --plugin MODULE)")
        hints = typing.get_type_hints(cls)
        fields = {k: _typed(k, v, hints[k]) for k, v in values.items() if k in _FIELDS and k != "options"}
        options = {k: _typed(k, v, _option_hint(known[k])) for k, v in values.items() if k in known}
        return cls(**fields, options=dict(values.get("options", {})) | options)


def _option_hint(option: Option) -> Any:
    hint: Any = list[option.type] if option.nargs else option.type  # type: ignore[name-defined]  # built at run time
    return hint | None if option.default is None else hint


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


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
    raise UserError(f"configuration key {key!r} must be {wanted}, got {brief(value)}; fix the config.json "
                    f"or pass the value as a flag")


# Settings that are not extension points: their few values are fixed here.
CHOICES = {
    "shot_split": ("counts", "index"),
    "lt_generator": ("standard", "glmc"),
    "imb_type": ("exp", "step", "none"),
}


def resolve(overrides: dict[str, Any], recipe: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- data set's defaults <- method's defaults <- recipe <- explicit overrides, then
    validated and the values left to ltsam filled in."""
    values = _given(overrides, recipe)
    merged = _implied_defaults(values)
    merged.update(values)
    cfg = TrainConfig.from_dict(merged)
    validate(cfg)
    return resolve_derived(cfg)


def _given(overrides: dict[str, Any], recipe: dict[str, Any] | None) -> dict[str, Any]:
    values: dict[str, Any] = dict(recipe or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def _implied_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The data set's defaults, then the method's, for the data set and method ``values`` name."""
    dataset = str(values.get("dataset", TrainConfig.dataset)).lower()
    merged = dict(DATASETS.entry(dataset).meta.get("defaults", {})) if dataset in DATASETS else {}
    method = str(values.get("method", TrainConfig.method)).lower()
    if method in METHODS:
        merged.update(METHODS.get(method).defaults(dataset))
    return merged


def implied_defaults(overrides: dict[str, Any], recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings the data set or method chose that neither the recipe nor a flag gave and that differ
    from ``TrainConfig``'s (the README flag table's) defaults: said at start, so no default overrides
    silently."""
    values = _given(overrides, recipe)
    table = TrainConfig()
    return {k: v for k, v in _implied_defaults(values).items()
            if k not in values and k in _FIELDS and getattr(table, k) != v}


def resolve_derived(cfg: TrainConfig) -> TrainConfig:
    """Fill the values left to ltsam (e.g. DRW's switch epoch, the cosine head, the step-rho values), so
    the saved ``config.json`` states what the run does rather than ``null``. Each chosen entry may
    declare a ``resolve(cfg)`` hook in its registration."""
    if cfg.use_norm is None:
        cfg.use_norm = uses_cosine_head(cfg)
    for key, registry in REGISTRIES.items():
        name = getattr(cfg, key)
        if name is not None and name in registry:
            hook = registry.entry(name).meta.get("resolve")
            if hook is not None:
                hook(cfg)
    return cfg


def config_warnings(cfg: TrainConfig, explicit: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Settings the user gave (``explicit`` keys) that are valid but almost certainly not what they meant."""
    notes = []
    if cfg.train_rule == "drw" and "drw_epoch" in explicit and cfg.drw_epoch >= cfg.epochs:
        notes.append(f"--drw-epoch {cfg.drw_epoch} is not below --epochs {cfg.epochs}: DRW never switches on "
                     f"and this run trains unweighted")
    return notes


# Core float settings that must be finite, with the smallest value each accepts (None: any).
_FINITE_MIN = {"imb_factor": None, "head_scale": None, "rho": 0.0, "min_rho": 0.0, "max_rho": 0.0, "lr": None,
               "momentum": None, "wd": None, "val_fraction": 0.0}
# Integer settings and their smallest allowed value (seeds are numpy seeds: 0 .. 2**32 - 1).
_INT_MIN = {"rand_number": 0, "seed": 0, "eval_batch_size": 1, "eval_every": 1, "threads": 1, "image_size": 1,
            "workers": 0, "epochs": 1, "batch_size": 1, "accumulate": 1, "val_per_class": 0}
# Sizes past which nothing can be allocated (an image side of 10^5 pixels is 10^10 pixels; 10^5 threads exhaust
# the process), refused before anything is built. A registered option's key is checked where it is registered.
_INT_MAX = {"image_size": 8192, "input_size": 8192, "threads": 1024}
_FLOAT32_MAX = 3.4028234663852886e38


def _check_number(flag: str, value: Any, low: float | None = None, below: float | None = None, *,
                  above: float | None = None, high: float | None = None) -> None:
    """``value`` of ``flag`` finite and within its bounds: ``low``/``high`` inclusive, ``above``/``below`` strict."""
    if isinstance(value, float) and (not math.isfinite(value) or abs(value) > _FLOAT32_MAX):
        raise UserError(f"{flag} must be a finite number that fits float32, got {value}")
    if low is not None and value < low:
        raise UserError(f"{flag} must be non-negative, got {value}" if isinstance(value, float) and low == 0 else
                        f"{flag} must be at least {low:g}, got {value}")
    if above is not None and value <= above:
        raise UserError(f"{flag} must be positive, got {value}" if above == 0 else
                        f"{flag} must lie above {above:g}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be at most {high:g}, got {value}")
    if below is not None and value >= below:
        raise UserError(f"{flag} must lie below {below:g}, got {value}")


def check_option(option: Option, value: Any) -> None:
    """A registered option's value (or each of a list of them) within the bounds the option declares."""
    if option.type not in (int, float):
        return
    for given in value if isinstance(value, list) else [value]:
        if given is not None:
            _check_number(option.flag, float(given) if option.type is float else given, option.minimum, option.below,
                          above=option.above, high=option.maximum)


def _check_numbers(cfg: TrainConfig) -> None:
    """Every float finite (a NaN --rho silently trained plain SGD), every number within its range."""
    for key, low in _FINITE_MIN.items():
        _check_number(flag_name(key), float(getattr(cfg, key)), low)
    for value in cfg.rho_steps or []:
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--rho-steps takes four finite non-negative values a b c d, got {cfg.rho_steps}")
    for key, low in _INT_MIN.items():
        if getattr(cfg, key) is not None:
            _check_number(flag_name(key), getattr(cfg, key), low)
    for key in ("seed", "rand_number"):
        if getattr(cfg, key) > SEED_MAX:
            raise UserError(f"{flag_name(key)} must lie in 0..{SEED_MAX}, got {getattr(cfg, key)}")
    for key, high in _INT_MAX.items():
        size = getattr(cfg, key, None) if key in _FIELDS or key in cfg.options else None
        if size is not None and size > high:
            raise UserError(f"{flag_name(key)} {size} cannot be allocated; it must be at most {high}")
    for name, option in all_options().items():
        check_option(option, cfg.options.get(name))


def _check_head_scale(cfg: TrainConfig) -> None:
    """``--head-scale`` multiplies a cosine head's logits: refused where there is none, or where the loss scales
    them itself (LDAM's s: the two would multiply)."""
    if cfg.head_scale == 1.0:
        return
    if not cfg.head_scale > 0:
        raise UserError(f"--head-scale must be positive, got {cfg.head_scale}")
    if cfg.loss in LOSSES and LOSSES.entry(cfg.loss).meta.get("cosine_head"):
        raise UserError(f"--loss {cfg.loss} scales the cosine head's logits itself (its own s); drop --head-scale")
    if cfg.method != "erm":
        raise UserError(f"--head-scale scales the cosine head of `--method erm`'s models; --method {cfg.method} "
                        "builds its own heads (drop --head-scale)")
    if not uses_cosine_head(cfg):
        raise UserError("--head-scale scales a cosine head's logits; add --head cosine")


def validate(cfg: TrainConfig) -> None:
    """Every name known to its registry, every number possible, the method's own checks."""
    for key in CHOICES:
        value = getattr(cfg, key).lower()
        setattr(cfg, key, value)
        if value not in CHOICES[key]:
            raise UserError(f"unknown {flag_name(key)} {value!r}; choose one of {', '.join(CHOICES[key])}")
    for key, registry in REGISTRIES.items():
        if key == "arch" or getattr(cfg, key) is None:
            continue
        setattr(cfg, key, registry.entry(getattr(cfg, key)).name)  # unknown names: one line with the choices
    method = METHODS.get(cfg.method)
    if cfg.arch is not None:
        cfg.arch = cfg.arch.lower()
        if not method.accepts_arch(cfg.arch):
            if MODELS.family(cfg.arch) is not None:
                what = f"--method {cfg.method} does not support {cfg.arch.partition(':')[0]}: backbones"
            else:
                what = (f"--method {cfg.method} does not train" if cfg.arch in MODELS else "unknown --arch") \
                    + f" {brief(cfg.arch)}"
            raise UserError(f"{what}; choose one of {', '.join(sorted(method.archs()))}")
        if MODELS.family(cfg.arch) is not None:  # a method's own architectures (GLMC's) are not MODELS entries
            MODELS.entry(cfg.arch)  # a family's member checked by its library (timm: the name exists)
    if cfg.tune != "full" and MODELS.family(cfg.arch or "") is None:
        raise UserError(f"--tune {cfg.tune} fine-tunes part of a pretrained backbone (--arch timm:NAME, clip:NAME); "
                        f"--arch {cfg.arch} trains whole (drop --tune)")
    if getattr(cfg, "feature_cache", False) and MODELS.family(cfg.arch or "") is None:
        raise UserError(f"--feature-cache caches a frozen pretrained backbone's features (--arch timm:NAME, clip:NAME "
                        f"with --tune linear); --arch {cfg.arch} trains whole (drop --feature-cache)")
    if getattr(cfg, "head_init", "random") != "random" and not str(cfg.arch or "").startswith("clip:"):
        raise UserError(f"--head-init {cfg.head_init} embeds class names with a CLIP text tower (--arch clip:NAME); "
                        f"--arch {cfg.arch} has none (drop --head-init)")
    if cfg.accumulate > 1 and not method.accumulates:
        raise UserError(f"--accumulate splits the batches of `--method erm`; --method {cfg.method} steps on its own "
                        "objective (drop --accumulate)")
    method.validate(cfg)
    _check_numbers(cfg)
    _check_head_scale(cfg)
    if not (0.0 < cfg.imb_factor <= 1.0):
        raise UserError(f"--imb-factor must lie in (0, 1] (smallest/largest class), got {cfg.imb_factor}")
    check_request(cfg.val_per_class, cfg.val_fraction, cfg.val_list)
    if cfg.rho_steps is not None and len(cfg.rho_steps) != 4:
        raise UserError(f"--rho-steps takes four non-negative values a b c d, got {cfg.rho_steps}")
    if cfg.shot_split == "index" and "index_split" not in DATASETS.entry(cfg.dataset).meta:
        raise UserError("--shot-split index is the reference's ImageNet-LT / iNat split; use counts here")
    if cfg.amp is not None:
        cfg.amp = cfg.amp.lower()
        if cfg.amp not in ("bf16", "fp16"):
            raise UserError(f"unknown --amp {cfg.amp!r}; choose bf16 or fp16")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.wd < 0 or not (0 <= cfg.momentum < 1):
        raise UserError("--wd must be >= 0 and --momentum in [0, 1)")


def run_name(cfg: TrainConfig) -> str:
    """A readable default run-folder name."""
    if cfg.recipe:
        return cfg.recipe
    opt = f"{step_run_name(cfg.optimizer)}{cfg.rho:g}" if cfg.uses_sam else "sgd"
    return (f"{cfg.dataset}_{cfg.arch}_{cfg.loss}_{cfg.train_rule}_{cfg.imb_type}{cfg.imb_factor:g}"
            f"_{opt}_seed{cfg.seed}")
