"""``ltsam train``'s flags, built from the registries, and the settings they give.

Library code, not a command: ``ltsam train`` parses with it, and ``--config`` files and sweep grids give
the same settings as data (:func:`setting_key`, :func:`typed_setting`), without building a command line.
Every flag either sets one configuration key (its ``dest``; :data:`ALIASES` for the four spelled
otherwise) or steers the command (:data:`COMMAND_FLAGS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

from ltsam.argtypes import brief, cut, flag_bool, lower
from ltsam.errors import UserError
from ltsam.io import read_settings_file

# Flags that steer the command (where it writes, whether it resumes) rather than set the run's configuration.
COMMAND_FLAGS = ("out", "overwrite", "resume", "stop_after", "no_progress", "seeds", "members", "config", "exp_str")
# Flags whose value sets a configuration key of another name (or shape): flag dest -> config key.
ALIASES = {"head": "use_norm", "gpu": "device", "log_results": "wandb", "plugin": "plugins"}
# Keys of a run's config.json that record where it was written, not what it computes: a --config file
# may hold them (a config.json passed back in) and they are left out.
RECORD_KEYS = ("out", "pack")


def _choices_flag(g, registry, *names: str, **kw) -> None:
    """A flag naming an entry of ``registry``; its help lists the registered entries."""
    g.add_argument(*names, dest=registry.key, type=lower, help=registry.help_text(), **kw)


def _option_flags(p: argparse.ArgumentParser, title: str, options) -> None:
    """The flags of the options registered entries declare (``--la-tau`` for a loss's ``la_tau``)."""
    if not options:
        return
    g = p.add_argument_group(title)
    for o in options:
        kind = lower if o.type is str and not o.keep_case else (flag_bool if o.type is bool else o.type)
        # A bool option is a switch: the flag alone means true (``--flag false`` also works).
        switch = dict(nargs="?", const=True) if o.type is bool and o.nargs is None else dict(nargs=o.nargs)
        g.add_argument(*(o.flags or (o.flag,)), dest=o.name, type=kind, metavar=o.metavar,
                       choices=o.choices, help=o.help or None, **switch)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    from ltsam.extensions import REGISTRIES as R

    g = p.add_argument_group("data")
    _choices_flag(g, R["dataset"], "--dataset")
    g.add_argument("--data-root", "--data_path", dest="data_root",
                   help="CIFAR pickles, image folders, or the folder list-file paths are relative to (default ./data)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR (checksummed)")
    g.add_argument("--imb-type", "--imb_type", dest="imb_type", type=lower, help="exp, step or none")
    g.add_argument("--imb-factor", "--imb_factor", dest="imb_factor", type=float,
                   help="smallest/largest class size, in (0, 1] (0.01 = imbalance ratio 100)")
    g.add_argument("--rand-number", "--rand_number", dest="rand_number", type=int,
                   help="numpy seed choosing the kept images (reference: 0)")
    g.add_argument("--image-size", type=int, help="resize folder images to N x N; crop size of list-file sets (224)")
    g.add_argument("--train-list", help="list file of training images (ImageNet-LT / iNat)")
    g.add_argument("--test-list", help="list file of test images (ImageNet-LT / iNat)")
    g.add_argument("--shot-split", type=lower, help="counts (>100/20-100/<20 images) or index (reference ranges)")
    g.add_argument("--norm", type=lower, help="normalisation constants: cifar, imagenet, data, or none (pixels in "
                                            "[0, 1]: what pretrained backbones get, which normalise their own input)")
    g.add_argument("--lt-generator", type=lower, help="standard (the paper's image selection) or glmc (GLMC's)")
    g.add_argument("--val-per-class", type=int, metavar="N",
                   help="hold out N images per class for validation, evaluated every epoch (CIFAR/digits: from the "
                        "images the LT profile leaves out; folders, list files: from the training images)")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="or hold out floor(F x the smallest class's images) per class")
    g.add_argument("--val-list", metavar="FILE",
                   help="or validate on the images of a list file (list-file sets, e.g. ImageNet-LT's "
                        "ImageNet_LT_val.txt); the training list stays whole")
    g = p.add_argument_group("model")
    _choices_flag(g, R["arch"], "-a", "--arch")
    g.add_argument("--head", type=lower, choices=["auto", "linear", "cosine"],
                   help="classifier head; auto = cosine (NormedLinear) when the loss asks for it (LDAM), else linear")
    g.add_argument("--head-scale", type=float, metavar="S",
                   help="the cosine head's logit scale: logits = S cos(feature, class vector) (default 1; LIFT's "
                        "25; LDAM scales in its loss, --ldam-s)")
    g = p.add_argument_group("method, loss and re-balancing")
    _choices_flag(g, R["method"], "--method")
    _choices_flag(g, R["loss"], "--loss", "--loss_type")
    _choices_flag(g, R["train_rule"], "--train-rule", "--train_rule")
    g = p.add_argument_group("optimisation")
    _choices_flag(g, R["optimizer"], "--optimizer")
    g.add_argument("--rho", type=float, help="SAM radius (0 = plain SGD)")
    _choices_flag(g, R["rho_schedule"], "--rho-schedule", "--rho_schedule")
    g.add_argument("--min-rho", "--min_rho", dest="min_rho", type=float)
    g.add_argument("--max-rho", "--max_rho", dest="max_rho", type=float)
    g.add_argument("--rho-steps", "--rho_steps", dest="rho_steps", type=float, nargs=4,
                   metavar=("A", "B", "C", "D"), help="values of the step rho schedule")
    g.add_argument("--adaptive", action="store_true", default=None, help="adaptive SAM (ASAM)")
    g.add_argument("--epochs", type=int)
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int)
    g.add_argument("--accumulate", type=int, metavar="K",
                   help="gradient accumulation: each batch in K micro-batches, one forward/backward each, one step "
                        "(the gradient of the whole batch's loss; batch norm sees the micro-batches; SAM perturbs "
                        "along the accumulated gradient); SGD, SAM, ASAM with --method erm")
    g.add_argument("--lr", type=float)
    _choices_flag(g, R["lr_schedule"], "--lr-schedule")
    g.add_argument("--cos_lr", dest="lr_schedule", action="store_const", const="cosine",
                   help="reference spelling of --lr-schedule cosine")
    g.add_argument("--momentum", type=float)
    g.add_argument("--wd", "--weight-decay", "--weight_decay", dest="wd", type=float)
    for registry in R.values():
        _option_flags(p, f"{registry.kind} options", registry.options())
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--gpu", type=int, help="reference spelling: use cuda:N when a GPU is present")
    g.add_argument("-j", "--workers", type=int, help="data-loading workers (in-memory sets need none)")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--eval-every", type=int, metavar="K",
                   help="evaluate on the test (and validation) images every K epochs and every epoch of the last 10 %% "
                        "(default 1: every epoch); best.pt / best_val.pt are the best of the evaluated epochs; "
                        "training is the same bits whatever K, and --resume may change it")
    g.add_argument("--threads", type=int,
                   help="CPU threads (default: the architecture's, e.g. 1 for small_cnn; else torch's)")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA and long CPU runs)")
    g.add_argument("--amp", type=lower,
                   help="mixed precision: bf16 (GPUs, and CPUs that compute it natively: AVX512-BF16 / AMX; "
                        "elsewhere emulated and slow) or fp16 (GPUs)")
    g.add_argument("--out", help="run folder (default runs/<name>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    g.add_argument("--stop-after", type=int, help="stop after N epochs of this invocation (resume later)")
    g.add_argument("--recipe", type=lower, help="start from a named recipe (`ltsam recipes`)")
    g.add_argument("--config", metavar="FILE",
                   help="start from the settings of a JSON or YAML file (configuration keys or flag names, e.g. a "
                        "run's config.json); flags given too override it")
    g.add_argument("--wandb", action="store_true", default=None, help="also log to Weights & Biases")
    g.add_argument("--log_results", action="store_true",
                   help="reference spelling: log to Weights & Biases when it is installed (else the run folder only)")
    g.add_argument("--exp_str", help="reference spelling: suffix of the default run-folder name")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import MODULE first, so the losses, steps, rules, data sets or methods it registers "
                        "can be used (repeatable; also read from the ltsam.plugins entry points)")


def config_keys() -> tuple[str, ...]:
    """The configuration keys a ``train`` flag sets under the key's own name: the config's fields and every
    registered option."""
    from ltsam.config import TrainConfig
    from ltsam.extensions import all_options

    internal = {"use_norm", "out", "recipe", "extra", "options", "plugins", "pack"}
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in internal]
    return tuple(fields) + tuple(all_options())


def setting_names() -> tuple[str, ...]:
    """Every settings key (a flag's ``dest``) that shapes a run: the configuration keys, the aliases and
    ``recipe``."""
    return config_keys() + tuple(ALIASES) + ("recipe",)


class _Recorder:
    """Stands in for a parser or group while the flags are added, keeping every action ``add_argument``
    returns (argparse's public way to learn a flag's spellings, type and choices)."""

    def __init__(self) -> None:
        self.actions: list[argparse.Action] = []
        self._parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._parser.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action


@functools.lru_cache(maxsize=8)
def _flags(registered: tuple[str, ...]) -> dict[str, argparse.Action]:
    recorder = _Recorder()
    add_train_flags(recorder)  # type: ignore[arg-type]  # only add_argument(_group) is called
    add_plugin_flag(recorder)  # type: ignore[arg-type]
    table: dict[str, argparse.Action] = {}
    for action in recorder.actions:
        for spelling in action.option_strings:
            table.setdefault(_norm(spelling), action)
    for action in recorder.actions:
        table.setdefault(action.dest, action)
    return table


def flag_table() -> dict[str, argparse.Action]:
    """Every spelling of every ``train`` flag (``imb_factor``, ``imb-factor``, ``a`` for ``-a``, the dests) ->
    its action; rebuilt when a plugin registers new options."""
    from ltsam.extensions import all_options

    return _flags(tuple(all_options()))


def _norm(name: str) -> str:
    return name.lstrip("-").replace("-", "_").lower()


def setting_key(name: Any, where: str) -> str:
    """The settings key of a name a file or grid uses (``imb-factor``, ``--imb-factor``, ``imb_factor``,
    ``loss_type``): the flag's ``dest``. A name no flag has, or a flag that steers the command, is a UserError."""
    action = flag_table().get(_norm(str(name)))
    if action is None:
        raise UserError(f"{where}: {brief(name)} is not an `ltsam train` setting (configuration keys and flags: "
                        f"`ltsam train --help`)")
    if action.dest in COMMAND_FLAGS:
        raise UserError(f"{where}: {brief(name)} steers the command, it is not a setting of the run; pass it as a flag")
    return action.dest


def typed_setting(name: str, value: Any, where: str) -> Any:
    """``value`` of the setting ``name`` (any spelling :func:`setting_key` takes) as the flag would read it:
    words through the flag's own type (``LDAM`` -> ``ldam``, ``1e-3`` -> 0.001), switches as booleans, a flag's
    choices enforced; numbers, booleans and lists of them pass through (the configuration checks their types)."""
    action = flag_table()[_norm(name)]
    flag = _long(action)
    if action.nargs == 0:  # a switch (store_true; store_const: --cos_lr is --lr-schedule cosine)
        if not isinstance(value, bool):
            raise UserError(f"{where}: {flag} is a switch; give true or false, got {brief(value)}")
        if action.const is not None:
            return action.const if value else None
        return value
    if isinstance(action, argparse.BooleanOptionalAction) and not isinstance(value, bool):
        raise UserError(f"{where}: {flag} is a switch; give true or false, got {brief(value)}")
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int) or isinstance(action, argparse._AppendAction)
    if many:
        items = value if isinstance(value, list) else [value]
        return [_typed_word(action, v, flag, where) for v in items]
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: {flag} takes one value, got {brief(value)}")
    return _typed_word(action, value, flag, where)


def _typed_word(action: argparse.Action, value: Any, flag: str, where: str) -> Any:
    if isinstance(value, (dict, list)):
        raise UserError(f"{where}: {flag} takes numbers or words, got {brief(value)}")
    if isinstance(value, str) and callable(action.type):
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise UserError(f"{where}: {flag}: {cut(str(exc)) or 'bad value'} (got {brief(value)})") from None
    if action.choices is not None and value is not None and value not in action.choices:
        raise UserError(f"{where}: {flag} {brief(value)}: choose one of {', '.join(map(str, action.choices))}")
    return value


def _long(action: argparse.Action) -> str:
    """A flag's first ``--long`` spelling (``--arch`` rather than ``-a``)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave: ``{dest: value}`` for every setting flag that was given."""
    return {k: getattr(args, k) for k in setting_names() if getattr(args, k, None) is not None}


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a ``--config`` file: a JSON or YAML mapping of configuration keys or flag names (a run's
    config.json too, whose ``out`` and ``pack`` say where it was written and are left out)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path} does not exist; give a JSON or YAML file of settings")
    doc = read_settings_file(path, "--config")
    if not isinstance(doc, dict):
        raise UserError(f"--config {path} must hold a mapping of settings (key: value), got {type(doc).__name__}")
    if doc.get("extra"):
        raise UserError(f"--config {path}: 'extra' holds {brief(doc['extra'])}; ltsam reads no settings there")
    settings: dict[str, Any] = {}
    for name, value in doc.items():
        if name in RECORD_KEYS or name == "extra":
            continue
        if name == "use_norm":  # config.json's spelling of --head
            if value not in (None, True, False):
                raise UserError(f"--config {path}: use_norm must be true, false or null, got {brief(value)}")
            name, value = "head", {True: "cosine", False: "linear"}.get(value)
        name = "plugin" if name == "plugins" else name
        key = setting_key(name, f"--config {path}")
        if key in settings:
            raise UserError(f"--config {path}: {brief(name)} sets {key!r}, which another key of the file sets too")
        settings[key] = value if value is None else typed_setting(name, value, f"--config {path}: {name}")
    _check_plugins(path, settings.get("plugin") or [])
    return {k: v for k, v in settings.items() if v is not None}


def _check_plugins(path: Path, named: list[str]) -> None:
    """A settings file is data: the plugins it names are used only when the command line named them too
    (``--plugin``, or an installed entry point); it never makes ltsam import a module."""
    from ltsam.extensions import missing_plugins

    missing = missing_plugins(named)
    if missing:
        flags = " ".join(f"--plugin {m}" for m in missing)
        raise UserError(f"{path} names plugin(s) {', '.join(missing)}, which ltsam does not import from a settings "
                        f"file; if you trust that code, add {flags} to the command")


def settings_overrides(settings: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Settings (flag dests) -> the configuration overrides they give (every key, None where not set) and the
    recipe they name."""
    values: dict[str, Any] = {k: settings.get(k) for k in config_keys()}
    if settings.get("plugin"):
        values["plugins"] = list(settings["plugin"])
    head = settings.get("head")
    if head is not None:
        values["use_norm"] = None if head == "auto" else head == "cosine"
    if settings.get("gpu") is not None and values["device"] is None:
        import torch

        gpu = settings["gpu"]
        values["device"] = f"cuda:{gpu}" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            print(f"ltsam: --gpu {gpu}: no CUDA GPU on this machine; training on the CPU", flush=True)
    if settings.get("log_results") and values["wandb"] is None:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            values["wandb"] = True
        else:
            print("ltsam: --log_results: wandb is not installed; results go to the run folder only")
    if values.get("rho") == 0:
        values["optimizer"] = "sgd"
    return values, settings.get("recipe")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration overrides of a parsed ``train`` command line (every key; None where not given)."""
    return settings_overrides(flag_settings(args))[0]
