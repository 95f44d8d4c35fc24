"""``ltsam train``'s flags, built from the registries, and the configuration overrides they give.

Library code, not a command: ``ltsam train`` parses with it, sweeps check a grid's runs with the same
parser, and ``ltsam finetune`` shares its plugin flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ltsam.argtypes import OneLineParser, flag_bool, lower


def _choices_flag(g, registry, *names: str, **kw) -> None:
    """A flag naming an entry of ``registry``; its help lists the registered entries."""
    g.add_argument(*names, dest=registry.key, type=lower, help=registry.help_text(), **kw)


def _option_flags(p: argparse.ArgumentParser, title: str, options) -> None:
    """The flags of the options registered entries declare (``--la-tau`` for a loss's ``la_tau``)."""
    if not options:
        return
    g = p.add_argument_group(title)
    for o in options:
        kind = lower if o.type is str else (flag_bool if o.type is bool else o.type)
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
    g.add_argument("--norm", type=lower, help="normalisation constants: cifar, imagenet or data")
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
    g.add_argument("--threads", type=int,
                   help="CPU threads (default: the architecture's, e.g. 1 for small_cnn; else torch's)")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA and long CPU runs)")
    g.add_argument("--amp", type=lower, help="mixed precision on GPU: bf16 or fp16")
    g.add_argument("--out", help="run folder (default runs/<name>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    g.add_argument("--stop-after", type=int, help="stop after N epochs of this invocation (resume later)")
    g.add_argument("--recipe", type=lower, help="start from a named recipe (`ltsam recipes`)")
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
    """The configuration keys a ``train`` flag can set: the config's fields and every registered option."""
    from ltsam.config import TrainConfig
    from ltsam.extensions import all_options

    internal = {"use_norm", "out", "recipe", "extra", "options", "plugins"}
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in internal]
    return tuple(fields) + tuple(all_options())


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: getattr(args, k, None) for k in config_keys()}
    if args.plugin:
        values["plugins"] = list(args.plugin)
    if args.head is not None:
        values["use_norm"] = None if args.head == "auto" else args.head == "cosine"
    if args.gpu is not None and args.device is None:
        import torch

        values["device"] = f"cuda:{args.gpu}" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            print(f"ltsam: --gpu {args.gpu}: no CUDA GPU on this machine; training on the CPU", flush=True)
    if args.log_results and args.wandb is None:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            values["wandb"] = True
        else:
            print("ltsam: --log_results: wandb is not installed; results go to the run folder only")
    if values.get("rho") == 0:
        values["optimizer"] = "sgd"
    return values


def train_parser() -> argparse.ArgumentParser:
    """``ltsam train``'s parser on its own (the registries' entries and options as they are now)."""
    parser = OneLineParser(prog="ltsam train", allow_abbrev=False)
    add_train_flags(parser)
    add_plugin_flag(parser)
    return parser
