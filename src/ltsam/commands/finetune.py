"""``ltsam finetune RUN --stage NAME``: a second stage (cRT, LWS, tau-norm, weight balancing) on a finished run,
into a run folder of its own."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ltsam.argtypes import as_typed, flag_bool, lower
from ltsam.errors import UserError
from ltsam.run.files import CONFIG_NAME, LAST
from ltsam.runs import CHECKPOINTS
from ltsam.train_flags import add_plugin_flag


def add_parser(sub: Any) -> None:
    from ltsam.finetune import STAGES

    p = sub.add_parser("finetune", help="a second stage on a finished run: " + ", ".join(STAGES.names()),
                       allow_abbrev=False)
    p.add_argument("run", nargs="?", help="the finished run folder (or checkpoint file)")
    p.add_argument("--stage", type=lower, help=STAGES.help_text())
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
    g.add_argument("--recipe", type=lower, help="a named second-stage recipe (`ltsam recipes`)")
    g.add_argument("--no-progress", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_finetune)
    add_plugin_flag(p)


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
        kind = lower if o.type is str and o.choices else (flag_bool if o.type is bool else o.type)
        defaults = ", ".join(f"{stage} {'-' if opt.default is None else as_typed(opt.default)}" for stage, opt in pairs)
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
    from ltsam.config import check_option
    from ltsam.console import print_results
    from ltsam.data.loading import load_data
    from ltsam.finetune import STAGES, build_stage
    from ltsam.finetune.parent import StageSettings, load_parent
    from ltsam.finetune.runner import StageRunner
    from ltsam.finetune.stages import stage_options
    from ltsam.io import read_json, write_json
    from ltsam.runs import prepare_run_dir, refuse_overlap, run_finished

    given = {o.name: getattr(args, o.name, None) for o in STAGES.options()}
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_NAME).is_file():
            raise UserError(f"--resume {run_dir}: no config.json there; pass the folder of an ltsam finetune run")
        settings = StageSettings.from_dict(read_json(run_dir / CONFIG_NAME))
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
        runner = StageRunner(settings, parent, run_dir, resume=(run_dir / LAST).is_file(),
                             progress=not args.no_progress)
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
            check_option(o, options[o.name])
        build_stage(entry.name, options)  # the stage's own checks (e.g. --tau-grid), before any work
        parent = load_parent(args.run, args.which or "last")
        if recipe and parent.cfg.recipe != recipe["parent"] and main_rank:
            print(f"ltsam: warning: recipe {args.recipe} is meant for a run of recipe {recipe['parent']}; this run's "
                  f"is {parent.cfg.recipe or 'none'}", flush=True)
        settings = StageSettings(entry.name, options, parent.info, seed=args.seed if args.seed is not None else 0,
                                 device=args.device or "auto", workers=args.workers, data_root=args.data_root,
                                 recipe=args.recipe, plugins=list(args.plugin or []))
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
        data = load_data(parent.cfg)
        # The data, device, stage and its head (a stage refusing this head, e.g. tau-norm on a cosine head) are
        # built before the run folder is touched, so a refused command leaves nothing behind.
        runner = StageRunner(settings, parent, run_dir, data=data, progress=not args.no_progress)
        if main_rank:
            prepare_run_dir(run_dir, args.overwrite)
            write_json(run_dir / CONFIG_NAME, settings.to_dict())
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
