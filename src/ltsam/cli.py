"""Command line: ``ltsam train | eval | finetune | recipes | hessian | hessian-compare | sweep | report``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltsam.argtypes import OneLineParser
from ltsam.errors import UserError, exit_code_of
from ltsam.runs import CHECKPOINTS
from ltsam.train_cli import _add_plugin_flag, _add_train_flags, _flag_bool, _lower, _show, _train_overrides, cmd_train  # noqa: F401


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
    """``ltsam finetune``, holding the stage folder's lock until it ends, however it ends."""
    from ltsam.runs import release_run_locks

    try:
        return _finetune(args)
    finally:
        release_run_locks()


def _finetune(args: argparse.Namespace) -> int:
    from ltsam.config import _check_number
    from ltsam.data.registry import load_data
    from ltsam.finetune import STAGES, build_stage
    from ltsam.finetune.runner import StageRunner, StageSettings, load_parent
    from ltsam.finetune.stages import stage_options
    from ltsam.io import read_json, write_json
    from ltsam.report import print_results
    from ltsam.runs import prepare_run_dir, refuse_overlap, run_finished

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
        from ltsam.extensions import require_plugins

        require_plugins(settings.plugins, f"the stage run {run_dir}")
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
        if args.out:
            run_dir = Path(args.out)
        elif parent.info["run"] is not None:
            run = Path(parent.info["run"])
            run_dir = run.parent / f"{run.name}_{entry.name}"
        else:
            run_dir = Path("runs") / f"{Path(parent.info['path']).stem}_{entry.name}"
        parent_source = Path(parent.info["run"] or parent.info["path"])
        refuse_overlap(run_dir, parent_source, "the parent run" if parent.info["run"] else "the parent checkpoint")
        if parent.info["run"] is not None and not run_finished(parent_source) and main_rank:
            print(f"ltsam: warning: the parent run {parent_source} has not finished its epochs (no complete "
                  f"final.json); the stage starts from its {parent.info['which']}.pt after epoch "
                  f"{parent.info['epoch']} — `ltsam train --resume {parent_source}` finishes it first", flush=True)
        if settings.data_root:
            parent.cfg.data_root = settings.data_root
        data = load_data(parent.cfg)  # a data set that cannot be read fails before the run folder exists
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
    parser = OneLineParser(prog="ltsam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train a model (defaults: LDAM + DRW + SAM on bundled digits)",
                       allow_abbrev=False)
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="recompute the results of a saved model")
    p.add_argument("target", help="run folder or checkpoint file")
    p.add_argument("--which", choices=CHECKPOINTS, default="best",
                   help="best (test top-1), last or best_val (validation top-1; runs with a validation split)")
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
    p.add_argument("--which", choices=CHECKPOINTS, help="the parent's checkpoint (default last: its final "
                                                             "weights; best_val: its best validation top-1)")
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
    return exit_code_of(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
