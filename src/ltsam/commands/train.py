"""``ltsam train``: train a model into a run folder, or ``--resume`` one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltsam.argtypes import as_typed, flag_name, seed
from ltsam.errors import UserError
from ltsam.run.files import BEST_VAL, CONFIG_NAME, DIVERGED_NAME
from ltsam.train_flags import add_plugin_flag, add_train_flags, flag_settings, read_settings, settings_overrides

if TYPE_CHECKING:
    from ltsam.config import TrainConfig
    from ltsam.pack.trainer import PackTrainer
    from ltsam.trainer import Trainer


# What --resume may set anew: where the run computes, and what it measures (--eval-every changes which epochs are
# evaluated, never what is trained); a run alone may also be lengthened (--epochs), a pack's members not.
PACK_RESUME_MAY_SET = ("device", "workers", "eval_every")
RESUME_MAY_SET = (*PACK_RESUME_MAY_SET, "epochs")


def add_parser(sub: Any) -> None:
    """``ltsam train``'s parser: its flags come from the registries (``ltsam.train_flags``)."""
    p = sub.add_parser("train", help="train a model (defaults: LDAM + DRW + SAM on bundled digits)",
                       allow_abbrev=False)
    add_train_flags(p)
    add_plugin_flag(p)
    p.add_argument("--seeds", type=seed, nargs="+", metavar="SEED",
                   help="train one run per seed as one pack (one fused model, ltsam.pack) into OUT/seed0, OUT/seed1, "
                        "... (runs that do not pack, e.g. timm:/clip: or GLMC, one after another); ends with the "
                        "mean ± std table of `ltsam report OUT`; `--resume OUT` continues them")
    p.add_argument("--members", metavar="FILE",
                   help="train the runs a members file lists (what `ltsam sweep --pack` writes) as one pack, each into "
                        "its own folder: finished ones left alone, interrupted ones resumed, the others started; "
                        "needs --out DIR, the folder every run it names must lie in (relative paths in the file are "
                        "read against the file's folder; plugins its settings name must be given with --plugin)")
    from ltsam.pack.model import MODES

    p.add_argument("--pack-mode", choices=("auto", *MODES), default="auto",
                   help="how a pack (--seeds, --members) runs its fused model: vmap (grouped convolutions; the "
                        "default on CUDA), threads (the members side by side on CPU threads; the CPU default), loop "
                        "(the members in turn: each member's computation bit for bit its run alone's)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``ltsam train``, holding the run folder's lock throughout: Ctrl-C, SIGTERM and a full disk stop
    it with one line saying how to continue."""
    from ltsam.faults import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, is_disk_full, sigterm_as_interrupt
    from ltsam.runs import continue_command, held_run_dir, release_run_locks

    try:
        with sigterm_as_interrupt():
            return _train(args)
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        command = continue_command()  # a pack's `--resume OUT`, never one member's folder
        then = (f"`{command}` continues from its last finished epoch" if command else
                "`ltsam train --resume RUN_DIR` continues a training run")
        print(f"ltsam: {how}; {then}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno is None:
            raise
        where = exc.filename or held_run_dir()
        then = f"`{continue_command() or 'ltsam train --resume RUN_DIR'}` continues"
        if is_disk_full(exc):
            raise UserError(f"no space left on the disk{f' writing {where}' if where else ''}; the last checkpoint "
                            f"is intact — free some space, then {then}") from None
        raise UserError(f"cannot write {where or 'the run folder'} ({exc.strerror}); the last checkpoint is intact "
                        f"— fix the cause (permissions, a read-only or immutable folder), then {then}") from None
    finally:
        release_run_locks()


def _train(args: argparse.Namespace) -> int:
    from ltsam.config import config_warnings, implied_defaults, resolve, resolve_derived, run_name, validate
    from ltsam.console import print_results
    from ltsam.io import write_json
    from ltsam.pack.folders import is_pack_dir
    from ltsam.recipes import get_recipe
    from ltsam.run.runtime import settle
    from ltsam.runs import open_for_resume, prepare_run_dir, read_run_config, repair_best
    from ltsam.trainer import Trainer

    if args.resume and args.config:
        raise UserError("--resume continues a run with its own config.json; leave --config out")
    if args.members:
        return _train_members(args)
    settings = (read_settings(args.config) if args.config else {}) | flag_settings(args)  # flags win
    overrides, recipe_name = settings_overrides(settings)
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    if args.resume and args.seeds:
        raise UserError("--resume continues a run or a pack as it was started; leave --seeds out")
    if args.resume and is_pack_dir(Path(args.resume)):
        return _resume_pack(args, overrides)
    if args.pack_mode != "auto" and not args.seeds:
        raise UserError(f"--pack-mode {args.pack_mode} sets how a pack runs (--seeds, --members, --resume of a "
                        f"pack); leave it out for a single run")
    if args.resume:
        run_dir = Path(args.resume)
        has_checkpoint = open_for_resume(run_dir, owner=int(os.environ.get("RANK", "0")) == 0)
        cfg = read_run_config(run_dir)
        saved_epochs = cfg.epochs
        changed = {k: v for k, v in overrides.items()
                   if v is not None and k not in RESUME_MAY_SET and getattr(cfg, k) != v}
        if changed:
            raise UserError(f"--resume continues the saved configuration; these flags differ from it: "
                            f"{', '.join('--' + k.replace('_', '-') for k in changed)}")
        for key in RESUME_MAY_SET:
            if overrides.get(key) is not None:
                setattr(cfg, key, overrides[key])
        validate(cfg)
        trainer = Trainer(resolve_derived(cfg), run_dir, resume=has_checkpoint, progress=not args.no_progress)
        note = _resume_note(args, run_dir, trainer.start_epoch, saved_epochs, cfg)
        if trainer.ctx.is_main:
            repair_best(run_dir, trainer.start_epoch, (trainer.best_record or {}).get("epoch"))
            repair_best(run_dir, trainer.start_epoch, trainer.best_val_epoch, BEST_VAL)
            print(note, flush=True)
            write_json(run_dir / CONFIG_NAME, cfg.to_dict())  # with --epochs / --device / --workers as resumed
    else:
        recipe = get_recipe(recipe_name) if recipe_name else None
        cfg = resolve(overrides, recipe)
        implied = implied_defaults(overrides, recipe)
        if implied and int(os.environ.get("RANK", "0")) == 0:
            print(f"ltsam: {cfg.dataset}{'' if cfg.method == 'erm' else ' / ' + cfg.method} defaults in effect: "
                  + ", ".join(f"{flag_name(k)} {as_typed(v)}" for k, v in implied.items()), flush=True)
        name = run_name(cfg) + (f"_{args.exp_str}" if args.exp_str else "")
        run_dir = Path(args.out) if args.out else Path("runs") / name
        if args.seeds:
            return _train_seeds(args, cfg, run_dir)
        cfg.out = str(run_dir)
        # Data, device, model (its weights file included) and optimizer built before the run folder is touched,
        # so a refused command leaves nothing behind.
        from ltsam.data.loading import load_data

        data = load_data(cfg)
        settle(cfg, data.train_size)  # every value decided (--compile auto included); frozen from here on
        trainer = Trainer(cfg, run_dir, progress=not args.no_progress, data=data, build_only=True)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the run folder;
            prepare_run_dir(run_dir, args.overwrite)  # the others wait for it in trainer.start()
            write_json(run_dir / CONFIG_NAME, cfg.to_dict())  # once: the trainer changes nothing in it
        trainer.start()
    if trainer.ctx.is_main:
        for note in config_warnings(cfg, {k for k, v in overrides.items() if v is not None}):
            print(f"ltsam: warning: {note}", flush=True)
        for note in trainer.method.built_step().warnings():  # e.g. ImbSAM with an empty tail set
            print(f"ltsam: warning: {note}", flush=True)
    if not trainer.ctx.is_main:
        trainer.fit(stop_after=args.stop_after)
        return 0
    print(f"ltsam: training {cfg.arch} on {cfg.dataset} ({trainer.data.train_size} images, "
          f"{trainer.data.num_classes} classes: {trainer.data.cls_num_list[0]}..{trainer.data.cls_num_list[-1]}) "
          f"with {cfg.method.upper() if cfg.method != 'erm' else cfg.loss.upper() + ' + ' + cfg.train_rule} + "
          f"{_optimizer_label(cfg)} on "
          f"{trainer.device}; run folder {run_dir}", flush=True)
    from ltsam.cpu_features import cpu_precision_note

    if precision_note := cpu_precision_note(cfg, trainer.device):  # bf16 native here, or emulated (docs/speed.md)
        print(f"ltsam: {precision_note}", flush=True)
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


def _optimizer_label(cfg: TrainConfig) -> str:
    """SAM, ASAM or the registered step's name (imbsam, ...); SGD when nothing perturbs."""
    if not cfg.uses_sam:
        return "SGD"
    from ltsam.optim.steps import step_label

    return step_label(cfg.optimizer)


def _resume_note(args: argparse.Namespace, run_dir: Path, done: int, saved_epochs: int, cfg: TrainConfig) -> str:
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


def _train_seeds(args: argparse.Namespace, cfg: TrainConfig, out: Path) -> int:
    """``--seeds``: the seeds' runs as one pack into ``out/seedN``, then their mean ± std table. Runs that do not
    pack (a pretrained backbone, GLMC, ``--accumulate``) train one after another into the same folders. The data
    is read before any folder is made, as for a run alone (a bad --data-root is one line, nothing created)."""
    from ltsam.data.loading import load_data
    from ltsam.pack.compat import check_pack, unpackable_reason
    from ltsam.pack.folders import prepare_pack_dir, seed_members
    from ltsam.pack.trainer import PackTrainer
    from ltsam.trainer import Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--seeds trains its runs as one pack in one process; run it without torchrun")
    from ltsam.runs import set_continue_command

    reason = unpackable_reason(cfg)
    members = seed_members(cfg, args.seeds, out, one_by_one=reason is not None)
    dirs = [Path(str(m.out)) for m in members]
    set_continue_command(f"ltsam train --resume {out}")
    if reason is None:
        check_pack(members)  # before any folder is touched
        datas = [load_data(m) for m in members]  # what the pack trains on: read once, here
        pack = PackTrainer(members, dirs, progress=not args.no_progress, datas=datas, mode=args.pack_mode)
        return _fit_pack(args, members, prepare_pack_dir(out, members, args.overwrite), out, False, pack=pack)
    # The first run built (its data, device, model and optimizer) before any folder; the others are built in turn.
    first = Trainer(members[0], dirs[0], progress=not args.no_progress, data=load_data(members[0]), build_only=True)
    print(f"ltsam: these runs do not pack ({reason.partition(';')[0]}); training the {len(members)} seeds one "
          "after another", flush=True)
    dirs = prepare_pack_dir(out, members, args.overwrite)
    return _fit_one_by_one(args, members, dirs, out, [False] * len(members), first)


def _fit_one_by_one(args: argparse.Namespace, cfgs: list[TrainConfig], dirs: list[Path], out: Path,
                    started: list[bool], first: Trainer | None = None) -> int:
    """Each run of an unpackable ``--seeds`` set in turn (a finished one recomputes its final results, a
    diverged one is recorded and the others go on), then the mean ± std table of the finished ones. ``first``:
    the first run's trainer, built before its folder was made (a new set)."""
    from ltsam.config import resolve_derived
    from ltsam.errors import TrainingDiverged
    from ltsam.io import write_json
    from ltsam.pack.folders import diverged
    from ltsam.trainer import Trainer

    finished, failed = [], []
    for i, (cfg, run_dir, resume) in enumerate(zip(cfgs, dirs, started)):
        if diverged(run_dir):
            failed.append(run_dir.name)
            continue
        print(f"ltsam: run {run_dir} ({cfg.arch} on {cfg.dataset}, seed {cfg.seed})", flush=True)
        if resume:
            trainer = Trainer(resolve_derived(cfg), run_dir, resume=True, progress=not args.no_progress)
        elif i == 0 and first is not None:
            trainer = first.start()
        else:
            trainer = Trainer(cfg, run_dir, progress=not args.no_progress)
        try:
            summary = trainer.fit(stop_after=args.stop_after)
        except TrainingDiverged as exc:  # recorded as a pack member's is: a resume leaves it and trains the rest
            write_json(run_dir / DIVERGED_NAME, {"message": str(exc)})
            print(f"ltsam: {run_dir.name} stopped: {exc}", flush=True)
            failed.append(run_dir.name)
            continue
        if summary.get("epochs_done") == cfg.epochs:
            finished.append(run_dir)
    return _report_set(finished, failed, out, "runs")


def _report_set(finished: list[Path], failed: list[str], out: Path | None, what: str) -> int:
    """The end of a ``--seeds`` set or pack: the mean ± std table of its finished runs (in ``out/report``), then a
    non-zero exit naming the diverged ones."""
    from ltsam.errors import TrainingDiverged
    from ltsam.pack.folders import REPORT_DIR
    from ltsam.summary import build_report

    if finished and out is not None:
        text, where = build_report(finished, out / REPORT_DIR, partial=True, figures=False)
        print(text)
        print(f"report in {where}/report.md")
    if failed:
        raise TrainingDiverged(f"{', '.join(failed)} diverged (see diverged.json in each); the other {what} finished")
    return 0


def _resume_pack(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``--resume OUT`` of a ``--seeds`` pack: every member from its own last.pt, as one pack again."""
    from ltsam.pack.folders import open_pack_for_resume
    from ltsam.runs import set_continue_command

    out = Path(args.resume)
    given = sorted(k for k, v in overrides.items() if v is not None and k not in PACK_RESUME_MAY_SET)
    if given:
        raise UserError(f"--resume of a pack continues its saved configurations; leave out "
                        f"{', '.join(flag_name(k) for k in given)}")
    set_continue_command(f"ltsam train --resume {out}")
    cfgs, dirs, started = open_pack_for_resume(out)
    for cfg in cfgs:
        for key in PACK_RESUME_MAY_SET:
            if overrides.get(key) is not None:
                setattr(cfg, key, overrides[key])
    if any((cfg.pack or {}).get("one_by_one") for cfg in cfgs):
        print(f"ltsam: resuming the {len(dirs)} runs in {out}, one after another", flush=True)
        return _fit_one_by_one(args, cfgs, dirs, out, started)
    again = [d.name for d, s in zip(dirs, started) if not s]
    note = (f"; {', '.join(again)} never finished an epoch: {'they start' if len(again) > 1 else 'it starts'} "
            f"again from config.json and catch{'' if len(again) > 1 else 'es'} up" if again and any(started) else "")
    print(f"ltsam: resuming the pack of {len(dirs)} runs in {out}{note}", flush=True)
    return _fit_pack(args, cfgs, dirs, out, resume=started)


def _train_members(args: argparse.Namespace) -> int:
    """``--members FILE``: the unfinished runs of a members file as one pack (``ltsam sweep --pack``'s job)."""
    from ltsam.pack.folders import open_members
    from ltsam.runs import set_continue_command

    steering = ("members", "out", "no_progress", "stop_after", "pack_mode", "plugin", "func", "command")
    given = [k for k, v in vars(args).items() if k not in steering and v not in (None, False)]
    if given:
        raise UserError(f"--members trains the runs as their settings files say; leave out "
                        f"{', '.join(flag_name(k) for k in sorted(given))}")
    if not args.out:
        raise UserError(f"--members {args.members} needs --out DIR: the folder its runs lie in (a sweep's folder); "
                        f"a members file is handed data and chooses no folder outside it")
    set_continue_command(f"ltsam train --members {args.members} --out {args.out}")
    cfgs, dirs, resume = open_members(Path(args.members), Path(args.out), args.plugin or [])
    if not cfgs:
        print(f"ltsam: every run of {args.members} has finished", flush=True)
        return 0
    return _fit_pack(args, cfgs, dirs, None, resume)


def _fit_pack(args: argparse.Namespace, cfgs: list[TrainConfig], dirs: list[Path], out: Path | None,
              resume: bool | list[bool], pack: PackTrainer | None = None) -> int:
    """Train a pack (``pack``: built already, before its folders were made) and report it."""
    from ltsam.pack.folders import repair_members
    from ltsam.pack.trainer import PackTrainer

    if pack is None:
        pack = PackTrainer(cfgs, dirs, resume=resume, progress=not args.no_progress, mode=args.pack_mode)
    if resume is True or (isinstance(resume, list) and any(resume)):
        repair_members(dirs, [(m.state.start_epoch, (m.state.best_record or {}).get("epoch"), m.state.best_val_epoch)
                              for m in pack.members])
    first = cfgs[0]
    print(f"ltsam: training {len(cfgs)} runs of {first.arch} on {first.dataset} as one pack ({pack.mode} mode) on "
          f"{pack.device}; run folders {', '.join(str(d) for d in dirs)}", flush=True)
    from ltsam.cpu_features import cpu_precision_note

    if precision_note := cpu_precision_note(first, pack.device):  # as for a run alone
        print(f"ltsam: {precision_note}", flush=True)
    summaries = pack.fit(stop_after=args.stop_after)
    return _report_set([d for d, s in zip(dirs, summaries) if s is not None],
                       [d.name for d, s in zip(dirs, summaries) if s is None], out, "members")
