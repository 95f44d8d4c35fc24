"""Command line: ``ltsam train | eval | recipes | hessian | hessian-compare``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ltsam.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value on one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _lower(value: str) -> str:
    return value.lower()


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=_lower,
                   help="digits (default, offline), cifar10, cifar100, folder, imagenet_lt, inat18")
    g.add_argument("--data-root", help="CIFAR pickles or image folders (default ./data)")
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
    g = p.add_argument_group("model")
    g.add_argument("-a", "--arch", type=_lower, help="resnet20/32/44/56/110 or small_cnn")
    g.add_argument("--head", type=_lower, choices=["auto", "linear", "cosine"],
                   help="classifier head; auto = cosine (NormedLinear) with LDAM, else linear")
    g = p.add_argument_group("loss and re-balancing")
    g.add_argument("--loss", "--loss_type", dest="loss", type=_lower, help="ce, focal, ldam or vs")
    g.add_argument("--train-rule", "--train_rule", dest="train_rule", type=_lower,
                   help="none, reweight, resample or drw")
    g.add_argument("--drw-epoch", type=int, help="0-indexed epoch DRW switches on (default 160 of 200, scaled)")
    g.add_argument("--beta", type=float, help="effective-number beta (default 0.9999)")
    g.add_argument("--focal-gamma", type=float, help="focal loss gamma (default 1)")
    g.add_argument("--gamma", dest="vs_gamma", type=float, help="VS loss gamma (default 0.3)")
    g.add_argument("--tau", dest="vs_tau", type=float, help="VS loss tau (default 1.0)")
    g.add_argument("--margin", type=float, help="LDAM max margin (default 0.5)")
    g = p.add_argument_group("GLMC (--method glmc)")
    g.add_argument("--method", type=_lower, help="erm (default: losses + rules) or glmc")
    g.add_argument("--resample-weighting", "--resample_weighting", dest="resample_weighting", type=float,
                   help="GLMC: q of the re-sampled stream's weights n_c^-q (default 0.2)")
    g.add_argument("--label-weighting", "--label_weighting", dest="label_weighting", type=float,
                   help="GLMC: gamma of the label weights n_c^-gamma (default 1.0)")
    g.add_argument("--contrast-weight", "--contrast_weight", dest="contrast_weight", type=float,
                   help="GLMC: weight of the consistency loss (default 10)")
    g.add_argument("--mix-beta", type=float, help="GLMC: lambda ~ Beta(b, b) (default 1 = the reference)")
    g.add_argument("--lt-generator", type=_lower, help="standard (the paper's image selection) or glmc (GLMC's)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", type=_lower, help="sam (default) or sgd")
    g.add_argument("--rho", type=float, help="SAM radius (0 = plain SGD)")
    g.add_argument("--rho-schedule", "--rho_schedule", dest="rho_schedule", type=_lower,
                   help="none, linear or step")
    g.add_argument("--min-rho", "--min_rho", dest="min_rho", type=float)
    g.add_argument("--max-rho", "--max_rho", dest="max_rho", type=float)
    g.add_argument("--rho-steps", "--rho_steps", dest="rho_steps", type=float, nargs=4,
                   metavar=("A", "B", "C", "D"), help="values of the step rho schedule")
    g.add_argument("--adaptive", action="store_true", default=None, help="adaptive SAM (ASAM)")
    g.add_argument("--epochs", type=int)
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-schedule", type=_lower, help="step (reference CIFAR) or cosine")
    g.add_argument("--momentum", type=float)
    g.add_argument("--wd", "--weight-decay", "--weight_decay", dest="wd", type=float)
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
    g.add_argument("--log_results", action="store_true", help=S)
    g.add_argument("--exp_str", help=S)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


CONFIG_KEYS = ("dataset", "data_root", "download", "imb_type", "imb_factor", "rand_number", "image_size",
               "norm", "train_list", "test_list", "shot_split", "arch", "loss", "train_rule", "drw_epoch",
               "beta", "focal_gamma", "vs_gamma", "vs_tau", "margin", "optimizer", "rho", "rho_schedule",
               "min_rho", "max_rho", "rho_steps", "adaptive", "epochs", "batch_size", "lr", "lr_schedule",
               "momentum", "wd", "seed", "device", "workers", "threads", "eval_batch_size", "channels_last", "compile",
               "amp", "wandb", "method", "resample_weighting", "label_weighting", "contrast_weight", "mix_beta",
               "lt_generator")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: getattr(args, k) for k in CONFIG_KEYS}
    if args.head is not None:
        values["use_norm"] = None if args.head == "auto" else args.head == "cosine"
    if args.gpu is not None and args.device is None:
        import torch

        values["device"] = f"cuda:{args.gpu}" if torch.cuda.is_available() else "cpu"
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
    from ltsam.config import resolve, run_name
    from ltsam.recipes import get_recipe
    from ltsam.report import print_results
    from ltsam.runs import open_for_resume, prepare_run_dir, read_run_config, repair_best
    from ltsam.trainer import Trainer

    overrides = _train_overrides(args)
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
        from ltsam.config import validate
        from ltsam.io import write_json

        validate(cfg)
        trainer = Trainer(cfg, run_dir, resume=has_checkpoint, progress=not args.no_progress)
        note = _resume_note(args, run_dir, trainer.start_epoch, saved_epochs, cfg.epochs)
        if trainer.ctx.is_main:
            repair_best(run_dir, trainer.start_epoch, trainer.best_record)
            print(note, flush=True)
            write_json(run_dir / "config.json", cfg.to_dict())
    else:
        recipe = get_recipe(args.recipe) if args.recipe else None
        cfg = resolve(overrides, recipe)
        name = run_name(cfg) + (f"_{args.exp_str}" if args.exp_str else "")
        run_dir = Path(args.out) if args.out else Path("runs") / name
        cfg.out = str(run_dir)
        # Validate data and model before touching the run folder, so a bad flag changes nothing.
        from ltsam.io import write_json
        from ltsam.trainer import load_data

        data = load_data(cfg)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the run folder;
            prepare_run_dir(run_dir, args.overwrite)  # the others wait for it at process-group start
            write_json(run_dir / "config.json", cfg.to_dict())
        trainer = Trainer(cfg, run_dir, progress=not args.no_progress, data=data)
    if not trainer.ctx.is_main:
        trainer.fit(stop_after=args.stop_after)
        return 0
    print(f"ltsam: training {cfg.arch} on {cfg.dataset} ({trainer.data.train_size} images, "
          f"{trainer.data.num_classes} classes: {trainer.data.cls_num_list[0]}..{trainer.data.cls_num_list[-1]}) "
          f"with {'GLMC' if cfg.method == 'glmc' else cfg.loss.upper() + ' + ' + cfg.train_rule} + "
          f"{'SAM' if cfg.uses_sam else 'SGD'} on "
          f"{trainer.device}; run folder {run_dir}", flush=True)
    summary = trainer.fit(stop_after=args.stop_after)
    print_results(summary["final"], summary["classes"], summary["cls_num_list"],
                  title=f"{run_dir.name}: final epoch ({summary['epochs_done']}/{cfg.epochs})")
    best = summary["best"]
    if best["top1"] is not None:
        print(f"best epoch {best['epoch'] + 1}: top-1 {best['top1']:.2f}; results in {run_dir}/final.json")
    return 0


def _resume_note(args: argparse.Namespace, run_dir: Path, done: int, saved_epochs: int, epochs: int) -> str:
    """One line saying what ``--resume`` does, including with ``--epochs`` or ``--out``."""
    if epochs < done:
        raise UserError(f"--epochs {epochs}: {run_dir} has already finished {done} epochs; pass --epochs {done} "
                        f"or more (or leave --epochs out to finish its {saved_epochs})")
    note = (f"ltsam: {run_dir} stopped before its first checkpoint; starting it again from its config.json"
            if not done else f"ltsam: {run_dir} has finished its {epochs} epochs; recomputing its final results"
            if done == epochs else f"ltsam: resuming {run_dir} after epoch {done} of {epochs}")
    if epochs != saved_epochs:
        note += f"; --epochs {epochs} replaces the saved {saved_epochs} (the schedules follow the new length)"
    if args.out and os.path.realpath(args.out) != os.path.realpath(run_dir):
        note += f"; --out {args.out} is ignored: a resumed run stays in its own folder"
    if args.overwrite:
        note += "; --overwrite is ignored: --resume keeps the run"
    return note


def cmd_eval(args: argparse.Namespace) -> int:
    from ltsam.evaluate import evaluate
    from ltsam.io import write_json
    from ltsam.report import print_results
    from ltsam.runs import load_trained
    from ltsam.trainer import load_data

    model, cfg, ckpt = load_trained(args.target, args.which, args.device or "cpu")
    if args.data_root:
        cfg.data_root = args.data_root
    data = load_data(cfg)
    device = next(model.parameters()).device
    result, _ = evaluate(model, data.test_batches(cfg.eval_batch_size, device, workers=cfg.workers),
                         data.cls_num_list)
    print_results(result, data.classes, data.cls_num_list,
                  title=f"{args.target} ({args.which}, after epoch {ckpt['epoch']})")
    if args.json:
        write_json(args.json, {"checkpoint_epoch": ckpt["epoch"], **result})
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from ltsam.recipes import RECIPES, describe

    for name in RECIPES:
        print(describe(name))
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
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("recipes", help="list the named recipes")
    p.set_defaults(func=cmd_recipes)
    try:
        from ltsam.hessian_cli import add_hessian_commands
    except ImportError:
        pass
    else:
        add_hessian_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltsam: interrupted; `ltsam train --resume RUN_DIR` continues a training run",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
