"""``ltsam hessian`` and ``ltsam hessian-compare``: the per-class loss-landscape analysis from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ltsam.argtypes import non_negative_float, non_negative_int, positive_int
from ltsam.console import console
from ltsam.errors import UserError
from ltsam.hessian.inputs import LIST_FILE_PER_CLASS, hessian_dir, hessian_inputs, hessian_loss, parse_classes
from ltsam.losses import LOSSES
from ltsam.rules import TRAIN_RULES
from ltsam.runs import CHECKPOINTS
from ltsam.train_flags import add_plugin_flag


def cmd_hessian(args: argparse.Namespace) -> int:
    from ltsam.data.loading import load_data
    from ltsam.distributed import resolve_device
    from ltsam.hessian.analysis import analyze_classes
    from ltsam.runs import load_trained

    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent
    out_dir = Path(args.out) if args.out else hessian_dir(run_dir, args.split, args.which)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; the Hessian analysis writes a folder — choose a folder name")
    device = resolve_device(args.device)
    model, cfg, ckpt = load_trained(args.target, args.which, str(device))
    if args.data_root:
        cfg.data_root = args.data_root
    data = load_data(cfg)
    classes = parse_classes(args.classes, data.num_classes)
    every_class = args.classes == "all"
    streaming = data.streaming
    inputs, targets = hessian_inputs(data, args.split, args.augment, args.seed, args.max_per_class,
                                     None if every_class else classes)
    loss_fn = hessian_loss(args.loss, args.train_rule, data.cls_num_list, cfg).to(device)
    model.eval()
    summary = analyze_classes(
        model, loss_fn, inputs.to(device), targets.to(device), classes=classes, out_dir=out_dir,
        batch_size=args.batch_size, power_iters=args.power_iters, power_tol=args.power_tol,
        trace_iters=args.trace_iters, trace_tol=args.trace_tol, slq_steps=args.slq_steps, slq_runs=args.slq_runs,
        seed=args.seed,
        method=args.method, class_sizes=data.cls_num_list, progress=not args.no_progress,
        include_all=every_class or not streaming)  # a list-file subset holds only the chosen classes
    print_hessian_table(summary, data.cls_num_list, title=f"Hessian of the {args.loss.upper()} loss, "
                        f"{args.split} split, {run_dir.name} ({args.which}, epoch {ckpt['epoch']})")
    print(f"results in {out_dir}/summary.json and its figures")
    return 0


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    return "-" if v is None else fmt.format(v)


# Column headers of the summary quantities in the terminal tables.
HEADERS = {"lambda_dominant": "λdom", "esd_lambda_max": "λmax", "esd_lambda_min": "λmin", "ratio": "λmin/λmax",
           "trace": "trace"}
LEGEND = ("λdom: eigenvalue of largest |λ| (power iteration or Lanczos; can be negative); λmax, λmin: largest and "
          "smallest Ritz values of the SLQ runs")


def print_hessian_table(summary: dict[str, Any], cls_num_list: list[int], title: str) -> None:
    from rich.table import Table

    from ltsam.hessian.analysis import upgrade_summary

    summary = upgrade_summary(summary)
    shown = ("lambda_dominant", "esd_lambda_max", "esd_lambda_min", "ratio", "trace")
    table = Table(title=title, caption=LEGEND)
    for col in ("class", "train images", "samples", "loss", "acc %", *(HEADERS[q] for q in shown)):
        table.add_column(col, justify="right")
    for key in summary["order"]:
        row = summary["entries"].get(key, {})
        size = cls_num_list[int(key)] if key.isdigit() else sum(cls_num_list)
        acc = row.get("accuracy")
        table.add_row(key, str(size), str(row.get("count")), _num(row.get("loss")), _num(acc, "{:.2f}"),
                      *(_num(row.get(q), "{:.3f}" if q == "ratio" else "{:.4g}") for q in shown))
    console().print(table)


def cmd_hessian_compare(args: argparse.Namespace) -> int:
    from ltsam.hessian.analysis import compare_runs
    from ltsam.io import read_json

    summaries = []
    for run in (args.run_a, args.run_b):
        path = hessian_dir(Path(run), args.split, args.which) / "summary.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist; run `ltsam hessian {run} --split {args.split} "
                            f"--which {args.which}` first")
        summaries.append(read_json(path))
    labels = args.labels or [Path(args.run_a).name, Path(args.run_b).name]
    default = hessian_dir(Path(args.run_b), args.split, args.which) / f"compare_{labels[0]}.png"
    out = Path(args.out) if args.out else default
    rows = compare_runs(summaries[0], summaries[1], out, tuple(labels))
    from rich.table import Table

    table = Table(title=f"{labels[0]} (a) vs {labels[1]} (b), {args.split} split", caption=LEGEND)
    shown = ("lambda_dominant", "esd_lambda_max", "esd_lambda_min", "ratio", "trace")
    table.add_column("class", justify="right")
    for q in shown:
        for side in ("a", "b", "diff"):
            table.add_column(f"{HEADERS[q]} {side}", justify="right")
    for row in rows:
        table.add_row(str(row["class"]), *[_num(row[f"{q}_{side}"]) for q in shown for side in ("a", "b", "diff")])
    console().print(table)
    print(f"figure: {out}")
    return 0


def add_parser(sub: Any) -> None:
    """``ltsam hessian`` and ``ltsam hessian-compare``."""
    p = sub.add_parser("hessian", help="per-class Hessian spectrum of a trained model")
    p.add_argument("target", help="run folder or checkpoint file")
    p.add_argument("--which", choices=CHECKPOINTS, default="last", help="the run's checkpoint (default last)")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--loss", type=str.lower, choices=LOSSES.names(), default="ce",
                   help="loss whose Hessian is taken, with the run's options (default CE, as the reference)")
    p.add_argument("--train-rule", type=str.lower, choices=TRAIN_RULES.names(), default="none",
                   help="weight that loss as the train rule weights its last phase (drw: effective-number class "
                        "weights; default none: unweighted)")
    p.add_argument("--classes", default="all", help="all, or a comma-separated list of class indices")
    p.add_argument("--max-per-class", type=positive_int,
                   help=f"use at most N images of each class (list-file sets: default {LIST_FILE_PER_CLASS})")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--power-iters", type=positive_int, default=100)
    p.add_argument("--power-tol", type=non_negative_float, default=1e-3)
    p.add_argument("--trace-iters", type=positive_int, default=100)
    p.add_argument("--trace-tol", type=non_negative_float, default=1e-3)
    p.add_argument("--slq-steps", type=positive_int, default=100)
    p.add_argument("--slq-runs", type=positive_int, default=1)
    p.add_argument("--method", choices=["fast", "reference"], default="fast",
                   help="fast: λdom (largest |λ|) from the Lanczos run; reference: a separate power iteration")
    p.add_argument("--augment", action="store_true", help="apply one seeded draw of the training augmentation")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="where the data set is now, if it moved")
    p.add_argument("--out", help="output folder (default RUN_DIR/hessian/<split>, or <split>_<which> for "
                                 "--which best or best_val)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_hessian)
    add_plugin_flag(p)
    p = sub.add_parser("hessian-compare", help="two runs' per-class spectra side by side")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--which", choices=CHECKPOINTS, default="last",
                   help="the checkpoint whose `ltsam hessian` results are compared (default last)")
    p.add_argument("--labels", nargs=2)
    p.add_argument("--out", help="figure path")
    p.set_defaults(func=cmd_hessian_compare)
