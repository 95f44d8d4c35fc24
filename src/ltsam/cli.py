"""Command line: ``ltsam train | eval | finetune | recipes | hessian | hessian-compare | sweep | report``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ltsam.errors import TrainingDiverged, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value on one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
        g.add_argument(*(o.flags or (o.flag,)), dest=o.name, type=kind, nargs=o.nargs, metavar=o.metavar,
                       choices=o.choices, help=o.help or None)


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
        if not is_disk_full(exc):
            raise
        run, where = held_run_dir(), exc.filename or held_run_dir()
        raise UserError(f"no space left on the disk{f' writing {where}' if where else ''}; the last checkpoint "
                        f"is intact — free some space, then `ltsam train --resume {run or 'RUN_DIR'}` continues"
                        ) from None
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
            repair_best(run_dir, trainer.start_epoch, trainer.best_record)
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
    if not trainer.ctx.is_main:
        trainer.fit(stop_after=args.stop_after)
        return 0
    print(f"ltsam: training {cfg.arch} on {cfg.dataset} ({trainer.data.train_size} images, "
          f"{trainer.data.num_classes} classes: {trainer.data.cls_num_list[0]}..{trainer.data.cls_num_list[-1]}) "
          f"with {cfg.method.upper() if cfg.method != 'erm' else cfg.loss.upper() + ' + ' + cfg.train_rule} + "
          f"{'SAM' if cfg.uses_sam else 'SGD'} on "
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


def cmd_eval(args: argparse.Namespace) -> int:
    from ltsam.data.registry import load_data
    from ltsam.evaluate import evaluate_offsets, shot_split_groups
    from ltsam.io import check_writable_file, write_json
    from ltsam.report import print_results, print_sweep
    from ltsam.runs import load_trained

    if args.json:
        check_writable_file(args.json, "--json")
    taus = None
    if args.logit_adjust is not None:
        from ltsam.posthoc import parse_taus

        taus = parse_taus(args.logit_adjust)
    model, cfg, ckpt = load_trained(args.target, args.which, args.device or "cpu")
    if args.data_root:
        cfg.data_root = args.data_root
    data = load_data(cfg)
    device = next(model.parameters()).device
    groups = shot_split_groups(cfg, data.num_classes)
    batches = data.test_batches(cfg.eval_batch_size, device, workers=cfg.workers)
    title = f"{args.target} ({args.which}, after epoch {ckpt['epoch']})"
    if taus is None:
        (result, _), = evaluate_offsets(model, batches, data.cls_num_list, [None], groups=groups, confusion=False)
        print_results(result, data.classes, data.cls_num_list, title=title)
        if args.json:
            write_json(args.json, {"checkpoint_epoch": ckpt["epoch"], **result})
        return 0
    from ltsam.posthoc import adjustment

    prior = list(ckpt.get("cls_num_list") or data.cls_num_list)  # the training prior the run saw
    if len(prior) != data.num_classes:
        raise UserError(f"the checkpoint's class counts ({len(prior)} classes) do not fit the data set "
                        f"({data.num_classes} classes); pass the run's own data with --data-root")
    found = evaluate_offsets(model, batches, data.cls_num_list, [adjustment(prior, t) for t in taus], groups=groups,
                             confusion=False)
    rows = [{"tau": t, **result} for t, (result, _) in zip(taus, found)]
    if len(rows) == 1:
        print_results(rows[0], data.classes, data.cls_num_list,
                      title=f"{title}, post-hoc logit adjustment tau {taus[0]:g}")
    else:
        print_sweep(rows, f"{title}: post-hoc logit adjustment, argmax z - tau log prior")
    if args.json:
        write_json(args.json, {"checkpoint_epoch": ckpt["epoch"], "logit_adjust": rows} if len(rows) > 1 else
                   {"checkpoint_epoch": ckpt["epoch"], **rows[0]})
    return 0


def _add_stage_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option the registered stages declare; its help names each stage's default."""
    from ltsam.finetune import STAGES

    uses: dict[str, list[tuple[str, Any]]] = {}
    for entry in STAGES.entries():
        for o in entry.options:
            uses.setdefault(o.name, []).append((entry.name, o))
    g = p.add_argument_group("stage options (defaults: each stage's published settings)")
    for name, pairs in uses.items():
        o = pairs[0][1]
        kind = _lower if o.type is str and o.choices else (_flag_bool if o.type is bool else o.type)
        defaults = ", ".join(f"{stage} {'-' if opt.default is None else _show(opt.default)}" for stage, opt in pairs)
        g.add_argument(*(o.flags or (o.flag,)), dest=name, type=kind, default=None, metavar=o.metavar,
                       help=f"{o.help} (defaults: {defaults})" if len(pairs) > 1 else o.help)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ltsam.config import _check_number
    from ltsam.data.registry import load_data
    from ltsam.finetune import STAGES, build_stage
    from ltsam.finetune.runner import StageRunner, StageSettings, load_parent
    from ltsam.finetune.stages import stage_options
    from ltsam.io import read_json, write_json
    from ltsam.report import print_results
    from ltsam.runs import prepare_run_dir

    given = {o.name: getattr(args, o.name, None) for o in STAGES.options()}
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    data = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise UserError(f"--resume {run_dir}: no config.json there; pass the folder of an ltsam finetune run")
        settings = StageSettings.from_dict(read_json(run_dir / "config.json"))
        from ltsam.extensions import load_plugins

        load_plugins(settings.plugins)
        changed = [k for k, v in given.items() if v is not None and settings.options.get(k) != v]
        if args.run is not None or (args.stage and STAGES.entry(args.stage).name != settings.stage) or changed:
            differ = f" ({', '.join('--' + k.replace('_', '-') for k in changed)} differ)" if changed else ""
            raise UserError(f"--resume continues the saved stage; drop RUN, --stage and the stage options{differ}")
        for key in ("device", "workers", "data_root"):
            if getattr(args, key) is not None:
                setattr(settings, key, getattr(args, key))
        parent = load_parent(settings.parent["path"], settings.parent.get("which", "last"),
                             expect_sha256=settings.parent["sha256"])
        resume = (run_dir / "last.pt").is_file()
    else:
        if args.run is None:
            raise UserError("ltsam finetune needs the finished run: ltsam finetune RUN_DIR --stage "
                            + "|".join(STAGES.names()))
        recipe: dict[str, Any] = {}
        if args.recipe:
            from ltsam.recipes import get_stage_recipe

            recipe = get_stage_recipe(args.recipe)
        name = args.stage or recipe.get("stage")
        if name is None:
            raise UserError(f"--stage is required; choose one of {', '.join(STAGES.names())}")
        entry = STAGES.entry(name)
        options = stage_options(entry, dict(recipe.get("options", {}), **{k: v for k, v in given.items()
                                                                            if v is not None}))
        for o in entry.options:
            if o.type in (int, float) and options[o.name] is not None:
                _check_number(o.flag, options[o.name], o.minimum, o.below)
        build_stage(entry.name, options)  # the stage's own checks (e.g. --tau-grid), before any work
        parent = load_parent(args.run, args.which or "last")
        if recipe and parent.cfg.recipe != recipe["parent"] and main_rank:
            print(f"ltsam: warning: recipe {args.recipe} is meant for a run of recipe {recipe['parent']}; this run's "
                  f"is {parent.cfg.recipe or 'none'}", flush=True)
        settings = StageSettings(entry.name, options, parent.info, args.seed if args.seed is not None else 0,
                                 args.device or "auto", args.workers, args.data_root, args.recipe,
                                 list(args.plugin or []))
        if settings.data_root:
            parent.cfg.data_root = settings.data_root
        data = load_data(parent.cfg)  # a data set that cannot be read fails before the run folder exists
        if args.out:
            run_dir = Path(args.out)
        elif parent.info["run"] is not None:
            run = Path(parent.info["run"])
            run_dir = run.parent / f"{run.name}_{entry.name}"
        else:
            run_dir = Path("runs") / f"{Path(parent.info['path']).stem}_{entry.name}"
        if main_rank:
            prepare_run_dir(run_dir, args.overwrite)
            write_json(run_dir / "config.json", settings.to_dict())
        resume = False
    runner = StageRunner(settings, parent, run_dir, data=data, resume=resume, progress=not args.no_progress)
    if not runner.ctx.is_main:
        runner.fit(stop_after=args.stop_after)
        return 0
    stage = runner.stage
    what = (f"{stage.epochs} epochs, batch {stage.batch_size}, lr {stage.lr:g}, wd {stage.wd:g}, "
            f"{'class-balanced' if stage.balanced else 'instance'} sampling" if stage.trains else "no training")
    print(f"ltsam: {stage.name} on {parent.info['path']} (epoch {parent.info['epoch']}): {what}, on {runner.device}; "
          f"run folder {run_dir}", flush=True)
    summary = runner.fit(stop_after=args.stop_after)
    done = (f"{summary['epochs_done']}/{summary['epochs']} epochs" if stage.trains else
            f"tau {summary['tau']:g}, {summary['tau_selected_on']}")
    print_results(summary["final"], summary["classes"], summary["cls_num_list"], title=f"{run_dir.name}: {stage.name} "
                  f"({done})")
    print(f"results in {run_dir}/final.json; `ltsam eval {run_dir}` recomputes them")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from ltsam.recipes import RECIPES, STAGE_RECIPES, describe, describe_stage

    for name in RECIPES:
        print(describe(name))
    print("\nsecond stages and post-hoc adjustment on a finished run of the parent recipe:")
    for name in STAGE_RECIPES:
        print(describe_stage(name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ltsam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train a model (defaults: LDAM + DRW + SAM on bundled digits)",
                       allow_abbrev=False)
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="recompute the results of a saved model")
    p.add_argument("target", help="run folder or checkpoint file")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--device")
    p.add_argument("--data-root", help="where the data set is now, if it moved")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--logit-adjust", metavar="TAU",
                   help="post-hoc logit adjustment: predict argmax z - TAU log prior (the run's training class "
                        "prior); a list 0,0.5,1 or a range START:STOP:STEP (0:2:0.25) prints a sweep")
    p.set_defaults(func=cmd_eval)
    from ltsam.finetune import STAGES

    p = sub.add_parser("finetune", help="a second stage on a finished run: " + ", ".join(STAGES.names()),
                       allow_abbrev=False)
    p.add_argument("run", nargs="?", help="the finished run folder (or checkpoint file)")
    p.add_argument("--stage", type=_lower, help=STAGES.help_text())
    p.add_argument("--which", choices=["best", "last"], help="the parent's checkpoint (default last: its final "
                                                             "weights)")
    _add_stage_option_flags(p)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="sampling and initialisation seed (default 0)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("-j", "--workers", type=int, help="data-loading workers (default: the parent's)")
    g.add_argument("--data-root", help="where the parent's data set is now, if it moved")
    g.add_argument("--out", help="run folder (default: RUN_<stage> beside the parent)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    g.add_argument("--resume", metavar="STAGE_RUN", help="continue a stage from its last.pt")
    g.add_argument("--stop-after", type=int, help="stop after N epochs of this invocation (resume later)")
    g.add_argument("--recipe", type=_lower, help="a named second-stage recipe (`ltsam recipes`)")
    g.add_argument("--no-progress", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("recipes", help="list the named recipes")
    p.set_defaults(func=cmd_recipes)
    try:
        from ltsam.hessian_cli import add_hessian_commands
    except ImportError:
        pass
    else:
        add_hessian_commands(sub)
    from ltsam.summary import add_report_command
    from ltsam.sweep.command import add_sweep_command

    add_sweep_command(sub)
    add_report_command(sub)
    for name in ("train", "eval", "finetune", "hessian"):
        if name in sub.choices:
            _add_plugin_flag(sub.choices[name])
    return parser


def plugin_modules(argv: Sequence[str]) -> list[str]:
    """The ``--plugin MODULE`` values of a command line, read before parsing it (the parser's choices
    and flags come from the registries the plugins add to)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from ltsam.extensions import load_plugins

        load_plugins(plugin_modules(argv))
    except UserError as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return TrainingDiverged.exit_code
    except KeyboardInterrupt:
        print("ltsam: interrupted; `ltsam train --resume RUN_DIR` continues a training run",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
