"""``ltsam eval RUN``: recompute a saved model's results (optionally with post-hoc logit adjustment)."""

from __future__ import annotations

import argparse
from typing import Any

from ltsam.errors import UserError
from ltsam.runs import CHECKPOINTS
from ltsam.train_flags import add_plugin_flag


def add_parser(sub: Any) -> None:
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
    add_plugin_flag(p)


def cmd_eval(args: argparse.Namespace) -> int:
    from ltsam.console import print_results, print_sweep
    from ltsam.data.loading import load_data
    from ltsam.evaluate import evaluate_offsets, shot_split_groups
    from ltsam.io import check_writable_file, write_json
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
