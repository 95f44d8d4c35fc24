"""``ltsam train``: its flags (from the registries), the overrides they give, and the command itself.

Apart from ``ltsam.cli`` so that sweeps can check a grid with the same parser and run a training in
their own process without importing the whole command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltsam.argtypes import OneLineParser
from ltsam.errors import UserError, exit_code_of


def _lower(value: str) -> str:
    return value.lower()


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices_flag(g, registry, *names: str, **kw) -> None:
    """A flag naming an entry of ``registry``; its help lists the registered entries."""
    g.add_argument(*names, dest=registry.key, type=_lower, help=registry.help_text(), **kw)


def _option_flags(p: argparse.ArgumentParser, title: str, options) -> None:
    """The flags of the options registered entries declare (``--la-tau`` for a loss's ``la_tau``)."""
    if not options:
        return
    g = p.add_argument_group(title)
    for o in options:
        kind = _lower if o.type is str else (_flag_bool if o.type is bool else o.type)
        # A bool option is a switch: the flag alone means true (``--flag false`` also works).
        switch = dict(nargs="?", const=True) if o.type is bool and o.nargs is None else dict(nargs=o.nargs)
        g.add_argument(*(o.flags or (o.flag,)), dest=o.name, type=kind, metavar=o.metavar,
                       choices=o.choices, help=o.help or None, **switch)


def _flag_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from ltsam.extensions import REGISTRIES as R

    g = p.add_argument_group("data")
    _choices_flag(g, R["dataset"], "--dataset")
    g.add_argument("--data-root", "--data_path", dest="data_root",
                   help="CIFAR pickles, image folders, or the folder list-file paths are relative to (default ./data)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR (checksummed)")
    g.add_argument("--imb-type", "--imb_type", dest="imb_type", type=_lower, help="exp, step or none")
    g.add_argument("--imb-factor", "--imb_factor", dest="imb_factor", type=float,
                   help="smallest/largest class size, in (0, 1] (0.01 = imbalance ratio 100)")
    g.add_argument("--rand-number", "--rand_number", dest="rand_number", type=int,
                   help="numpy seed choosing the kept images (reference: 0)")
    g.add_argument("--image-size", type=int, help="resize folder images to N x N; crop size of list-file sets (224)")
    g.add_argument("--train-list", help="list file of training images (ImageNet-LT / iNat)")
    g.add_argument("--test-list", help="list file of test images (ImageNet-LT / iNat)")
    g.add_argument("--shot-split", type=_lower, help="counts (>100/20-100/<20 images) or index (reference ranges)")
    g.add_argument("--norm", type=_lower, help="normalisation constants: cifar, imagenet or data")
    g.add_argument("--lt-generator", type=_lower, help="standard (the paper's image selection) or glmc (GLMC's)")
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
    g.add_argument("--head", type=_lower, choices=["auto", "linear", "cosine"],
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
    g.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 for small_cnn)")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA and long CPU runs)")
    g.add_argument("--amp", type=_lower, help="mixed precision on GPU: bf16 or fp16")
    g.add_argument("--out", help="run folder (default runs/<name>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    g.add_argument("--stop-after", type=int, help="stop after N epochs of this invocation (resume later)")
    g.add_argument("--recipe", type=_lower, help="start from a named recipe (`ltsam recipes`)")
    g.add_argument("--wandb", action="store_true", default=None, help="also log to Weights & Biases")
    g.add_argument("--log_results", action="store_true",
                   help="reference spelling: log to Weights & Biases when it is installed (else the run folder only)")
    g.add_argument("--exp_str", help="reference spelling: suffix of the default run-folder name")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_plugin_flag(p: argparse.ArgumentParser) -> None:
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


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def cmd_train(args: argparse.Namespace) -> int:
    """``ltsam train``, holding the run folder's lock throughout: Ctrl-C, SIGTERM and a full disk stop
    it with one line saying how to continue."""
    from ltsam.faults import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, is_disk_full, sigterm_as_interrupt
    from ltsam.runs import held_run_dir, release_run_locks

    try:
        with sigterm_as_interrupt():
            return _train(args)
    except KeyboardInterrupt as exc:
        run = held_run_dir()
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        then = (f"`ltsam train --resume {run}` continues from its last finished epoch" if run else
                "`ltsam train --resume RUN_DIR` continues a training run")
        print(f"ltsam: {how}; {then}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno is None:
            raise
        run, where = held_run_dir(), exc.filename or held_run_dir()
        then = f"`ltsam train --resume {run or 'RUN_DIR'}` continues"
        if is_disk_full(exc):
            raise UserError(f"no space left on the disk{f' writing {where}' if where else ''}; the last checkpoint "
                            f"is intact — free some space, then {then}") from None
        raise UserError(f"cannot write {where or 'the run folder'} ({exc.strerror}); the last checkpoint is intact "
                        f"— fix the cause (permissions, a read-only or immutable folder), then {then}") from None
    finally:
        release_run_locks()


def _train(args: argparse.Namespace) -> int:
    from ltsam.config import config_warnings, implied_defaults, resolve, run_name
    from ltsam.recipes import get_recipe
    from ltsam.report import print_results
    from ltsam.runs import open_for_resume, prepare_run_dir, read_run_config, repair_best
    from ltsam.trainer import Trainer

    overrides = _train_overrides(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    if args.resume:
        run_dir = Path(args.resume)
        has_checkpoint = open_for_resume(run_dir, owner=int(os.environ.get("RANK", "0")) == 0)
        cfg = read_run_config(run_dir)
        saved_epochs = cfg.epochs
        changed = {k: v for k, v in overrides.items()
                   if v is not None and k not in ("device", "workers", "epochs") and getattr(cfg, k) != v}
        if changed:
            raise UserError(f"--resume continues the saved configuration; these flags differ from it: "
                            f"{', '.join('--' + k.replace('_', '-') for k in changed)}")
        for key in ("device", "workers", "epochs"):
            if overrides.get(key) is not None:
                setattr(cfg, key, overrides[key])
        from ltsam.config import resolve_derived, validate
        from ltsam.io import write_json

        validate(cfg)
        resolve_derived(cfg)
        trainer = Trainer(cfg, run_dir, resume=has_checkpoint, progress=not args.no_progress)
        note = _resume_note(args, run_dir, trainer.start_epoch, saved_epochs, cfg)
        if trainer.ctx.is_main:
            repair_best(run_dir, trainer.start_epoch, (trainer.best_record or {}).get("epoch"))
            repair_best(run_dir, trainer.start_epoch, trainer.best_val_epoch, "best_val.pt")
            print(note, flush=True)
            write_json(run_dir / "config.json", cfg.to_dict())
    else:
        recipe = get_recipe(args.recipe) if args.recipe else None
        cfg = resolve(overrides, recipe)
        implied = implied_defaults(overrides, recipe)
        if implied and int(os.environ.get("RANK", "0")) == 0:
            print(f"ltsam: {cfg.dataset}{'' if cfg.method == 'erm' else ' / ' + cfg.method} defaults in effect: "
                  + ", ".join(f"{_flag(k)} {_show(v)}" for k, v in implied.items()), flush=True)
        name = run_name(cfg) + (f"_{args.exp_str}" if args.exp_str else "")
        run_dir = Path(args.out) if args.out else Path("runs") / name
        cfg.out = str(run_dir)
        # Validate data and model before touching the run folder, so a bad flag changes nothing.
        from ltsam.data.registry import load_data
        from ltsam.io import write_json

        data = load_data(cfg)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the run folder;
            prepare_run_dir(run_dir, args.overwrite)  # the others wait for it at process-group start
            write_json(run_dir / "config.json", cfg.to_dict())
        trainer = Trainer(cfg, run_dir, progress=not args.no_progress, data=data)
        if trainer.ctx.is_main:  # now with what the trainer resolved (e.g. --compile auto)
            write_json(run_dir / "config.json", cfg.to_dict())
    if trainer.ctx.is_main:
        for note in config_warnings(cfg, {k for k, v in overrides.items() if v is not None}):
            print(f"ltsam: warning: {note}", flush=True)
        for note in trainer.method.step.warnings():  # e.g. ImbSAM with an empty tail set
            print(f"ltsam: warning: {note}", flush=True)
    if not trainer.ctx.is_main:
        trainer.fit(stop_after=args.stop_after)
        return 0
    print(f"ltsam: training {cfg.arch} on {cfg.dataset} ({trainer.data.train_size} images, "
          f"{trainer.data.num_classes} classes: {trainer.data.cls_num_list[0]}..{trainer.data.cls_num_list[-1]}) "
          f"with {cfg.method.upper() if cfg.method != 'erm' else cfg.loss.upper() + ' + ' + cfg.train_rule} + "
          f"{_optimizer_label(cfg)} on "
          f"{trainer.device}; run folder {run_dir}", flush=True)
    if getattr(trainer.data, "val_note", ""):
        print(f"ltsam: {trainer.data.val_note}", flush=True)
    summary = trainer.fit(stop_after=args.stop_after)
    print_results(summary["final"], summary["classes"], summary["cls_num_list"],
                  title=f"{run_dir.name}: final epoch ({summary['epochs_done']}/{cfg.epochs})")
    best = summary["best"]
    if best["top1"] is not None and best["epoch"] + 1 != summary["epochs_done"]:  # the table shows the last epoch
        print(f"best test epoch {best['epoch'] + 1}: top-1 {best['top1']:.2f} (selected on the test set: the paper's "
              f"protocol, for comparison only)")
    if summary.get("best_val"):
        bv = summary["best_val"]
        print(f"best validation epoch {bv['epoch'] + 1} (val top-1 {bv['val_top1']:.2f}): test top-1 {bv['top1']:.2f}")
    print(f"results in {run_dir}/final.json")
    return 0


def _optimizer_label(cfg: Any) -> str:
    """SAM, ASAM or the registered step's name (imbsam, ...); SGD when nothing perturbs."""
    if not cfg.uses_sam:
        return "SGD"
    return {"sam": "SAM", "asam": "ASAM"}.get(cfg.optimizer, cfg.optimizer)


def _resume_note(args: argparse.Namespace, run_dir: Path, done: int, saved_epochs: int, cfg: Any) -> str:
    """One line saying what ``--resume`` does, including with ``--epochs`` or ``--out``."""
    epochs = cfg.epochs
    if epochs < done:
        raise UserError(f"--epochs {epochs}: {run_dir} has already finished {done} epochs; pass --epochs {done} "
                        f"or more (or leave --epochs out to finish its {saved_epochs})")
    note = (f"ltsam: {run_dir} stopped before its first checkpoint; starting it again from its config.json"
            if not done else f"ltsam: {run_dir} has finished its {epochs} epochs; recomputing its final results"
            if done == epochs else f"ltsam: resuming {run_dir} after epoch {done} of {epochs}")
    if epochs != saved_epochs:
        note += f"; --epochs {epochs} replaces the saved {saved_epochs} (the LR schedule follows the new length"
        note += f"; DRW keeps its saved switch epoch {cfg.drw_epoch})" if cfg.train_rule == "drw" else ")"
    if args.out and os.path.realpath(args.out) != os.path.realpath(run_dir):
        note += f"; --out {args.out} is ignored: a resumed run stays in its own folder"
    if args.overwrite:
        note += "; --overwrite is ignored: --resume keeps the run"
    return note


def train_parser() -> argparse.ArgumentParser:
    """``ltsam train``'s parser on its own (the registries' entries and options as they are now)."""
    parser = OneLineParser(prog="ltsam train", allow_abbrev=False)
    _add_train_flags(parser)
    _add_plugin_flag(parser)
    return parser


def run_train(argv: Sequence[str]) -> int:
    """``ltsam train ARGV`` in this process, with the exit code the command gives (used by sweeps)."""
    from ltsam.extensions import load_plugins

    def run(args: Sequence[str]) -> int:
        load_plugins([a.split("=", 1)[1] if a.startswith("--plugin=") else b
                      for a, b in zip(args, [*args[1:], ""]) if a == "--plugin" or a.startswith("--plugin=")])
        return cmd_train(train_parser().parse_args(list(args)))

    return exit_code_of(run, list(argv))
