"""``ltsam report RUN_OR_SWEEP ...``: runs grouped by configuration (all settings but the seed), each group's
mean ± standard deviation over its seeds, as a Markdown table (printed and written), a CSV and figures.

Three ways to pick a run's number, side by side:

- last: the test accuracy after the final epoch;
- best val: the test accuracy at the epoch of the highest validation top-1 (``--val-per-class``), chosen on
  held-out images: the honest way to select an epoch;
- best test: the highest test top-1 over the epochs, the paper's protocol; it selects on the test set and is
  shown for comparison only.

Standard deviations are sample standard deviations, s = sqrt(sum_i (x_i - mean)^2 / (n - 1)), over the n runs
of a group. One run's own table and figures are :mod:`ltsam.report`'s.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltsam.errors import UserError
from ltsam.metrics import best_record
from ltsam.report import fmt
from ltsam.sweep.grid import VOLATILE

SHOTS = ("many", "medium", "few")
SELECTIONS = ("last", "best_val", "best_test")
GROUP_IGNORES = set(VOLATILE) | {"seed"}


@dataclass
class RunResult:
    """What the report reads from one run folder."""

    path: Path
    config: dict[str, Any]
    complete: bool
    epochs_done: int
    picks: dict[str, dict[str, Any] | None]  # selection -> {top1, many, medium, few, epoch, per_class}
    cls_num_list: list[int]
    curves: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class Group:
    label: str
    config: dict[str, Any]
    runs: list[RunResult]

    def values(self, selection: str, metric: str) -> list[float]:
        out = []
        for r in self.runs:
            pick = r.picks.get(selection)
            if pick is not None and pick.get(metric) is not None:
                out.append(float(pick[metric]))
        return out


def _pick(record: dict[str, Any] | None, prefix: str = "test_") -> dict[str, Any] | None:
    """A metrics.jsonl record as a pick: test top-1 and shot groups at that epoch."""
    if record is None:
        return None
    return {"top1": record[f"{prefix}top1"], **{k: record.get(f"{k}_acc") for k in SHOTS},
            "epoch": record["epoch"], "per_class": record.get("per_class_acc")}


def read_run(path: Path, partial: bool = False) -> RunResult | None:
    """A run folder's results; None for a run without final.json unless ``partial`` (then its last finished
    epoch stands for "last"), or for one that finished no epoch."""
    from ltsam.io import read_json

    config = read_json(path / "config.json")
    metrics = path / "metrics.jsonl"
    rows = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line being written
    final_path = path / "final.json"
    if final_path.is_file():
        final = read_json(final_path)
        fin = final["final"]
        last = {"top1": fin["top1"], **{k: fin["shot_acc"].get(k) for k in SHOTS},
                "epoch": len(rows) - 1 if rows else None, "per_class": fin["per_class_acc"]}
        best = final.get("best") or {}
        best_test = {"top1": best.get("top1"), **{k: (best.get("shot_acc") or {}).get(k) for k in SHOTS},
                     "epoch": best.get("epoch"), "per_class": best.get("per_class_acc")}
        bv = final.get("best_val")
        best_val = None if not bv else {"top1": bv["top1"], **{k: bv["shot_acc"].get(k) for k in SHOTS},
                                        "epoch": bv["epoch"], "per_class": bv.get("per_class_acc"),
                                        "val_top1": bv.get("val_top1")}
        return RunResult(path, config, True, final.get("epochs_done", len(rows)),
                         {"last": last, "best_val": best_val, "best_test": best_test}, final["cls_num_list"], rows)
    if not partial or not rows:
        return None
    cls_num_list = _cls_num_list(path)
    return RunResult(path, config, False, len(rows),
                     {"last": _pick(rows[-1]), "best_val": _pick(best_record(rows, "val_top1")),
                      "best_test": _pick(best_record(rows, "test_top1"))}, cls_num_list, rows)


def _cls_num_list(path: Path) -> list[int]:
    """Class sizes of an unfinished run, from its last checkpoint."""
    from ltsam.io import load_checkpoint

    try:
        return list(load_checkpoint(path / "last.pt").get("cls_num_list") or [])
    except UserError:
        return []


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (holding config.json) named, or found under the folders named (a sweep, a runs/ folder)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass run folders or sweep folders")
        if (p / "config.json").is_file():
            found.append(p)
            continue
        under = sorted(c.parent for c in p.rglob("config.json") if "report" not in c.relative_to(p).parts[:-1])
        if not under:
            raise UserError(f"{p} holds no run folders (no config.json under it); pass run or sweep folders")
        found += under
    seen, out = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _group_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in GROUP_IGNORES}, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    """Runs grouped by their configuration without the seed (and the settings that do not change results),
    in the order first seen; each group labelled by its run-folder name without ``_seed<N>``, or, where those
    differ, by the settings in which the groups differ."""
    by_key: dict[str, list[RunResult]] = {}
    for r in runs:
        by_key.setdefault(_group_key(r.config), []).append(r)
    groups = [Group("", rs[0].config, sorted(rs, key=lambda r: r.seed)) for rs in by_key.values()]
    differing = sorted({k for g in groups for k in g.config if k not in GROUP_IGNORES
                        and len({json.dumps(h.config.get(k), default=str) for h in groups}) > 1})
    for g in groups:
        stems = {re.sub(r"_seed\d+$", "", r.path.name) for r in g.runs}
        if len(stems) == 1:
            g.label = stems.pop()
        else:
            g.label = ", ".join(f"{k}={g.config.get(k)}" for k in differing) or (g.config.get("recipe") or "runs")
    labels = [g.label for g in groups]
    for g in groups:  # equal stems of different configurations (e.g. two sweeps with a config "sam")
        if labels.count(g.label) > 1:
            extra = ", ".join(f"{k}={g.config.get(k)}" for k in differing)
            g.label = f"{g.label} ({extra})" if extra else f"{g.label} ({g.runs[0].path.parent.name})"
    return groups


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation); std is None for fewer than two values, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _paper(group: Group) -> tuple[str, str]:
    """(the recipe's published top-1, the settings in which these runs differ from the recipe)."""
    from ltsam.recipes import PAPER_TOP1, RECIPES

    name = group.config.get("recipe")
    if not name or name not in PAPER_TOP1:
        return "–", ""
    recipe = RECIPES.get(name, {})
    diff = [f"{k} {group.config.get(k)} (recipe: {v})" for k, v in recipe.items()
            if k not in GROUP_IGNORES and group.config.get(k) != v]
    return f"{PAPER_TOP1[name]:.2f}", "; ".join(diff)


def table(groups: Sequence[Group]) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table (with its notes) and the CSV rows."""
    has_val = any(g.values("best_val", "top1") for g in groups)
    head = ["config", "n", "last top-1", "last many", "last medium", "last few"]
    if has_val:
        head += ["best-val top-1", "best-val many", "best-val medium", "best-val few"]
    head += ["best-test top-1 †", "paper top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    notes, rows = [], []
    for g in groups:
        paper, diff = _paper(g)
        if diff and paper != "–":
            notes.append(f"‡ {g.label}: the paper's figure is for the recipe as published; these runs differ in "
                         f"{diff}.")
            paper += " ‡"
        cells = [g.label, str(len(g.runs))]
        cells += [_cell(g.values("last", m)) for m in ("top1", *SHOTS)]
        if has_val:
            cells += [_cell(g.values("best_val", m)) for m in ("top1", *SHOTS)]
        cells += [_cell(g.values("best_test", "top1")), paper]
        lines.append("| " + " | ".join(cells) + " |")
        row: dict[str, Any] = {"config": g.label, "n": len(g.runs), "seeds": " ".join(str(r.seed) for r in g.runs),
                               "complete": sum(r.complete for r in g.runs),
                               "epochs": " ".join(sorted({str(r.epochs_done) for r in g.runs}))}
        for sel in SELECTIONS:
            for m in ("top1", *SHOTS):
                mean, std = mean_std(g.values(sel, m))
                row[f"{sel}_{m}_mean"], row[f"{sel}_{m}_std"] = mean, std
        row["paper_top1"] = None if paper == "–" else float(paper.split()[0])
        row["runs"] = " ".join(str(r.path) for r in g.runs)
        rows.append(row)
    n_min = min(len(g.runs) for g in groups)
    text = "\n".join(lines) + "\n\n" + "\n".join([
        "Test accuracy (%), mean ± sample standard deviation over the n seeds of each configuration"
        + (" (n = 1: no spread)." if n_min == 1 else "."),
        "last: after the final epoch."
        + (" best-val: at the epoch of the highest validation top-1 (held-out training-source images)."
           if has_val else " No validation split (--val-per-class): no best-val columns."),
        "† best-test: the highest test top-1 over the epochs — the paper's protocol, selected on the test set; "
        "for comparison only.",
        "paper: the published top-1 of the recipe (one run, best test epoch).",
        *notes])
    if any(not r.complete for g in groups for r in g.runs):
        text += ("\n* Includes unfinished runs (--partial): their last finished epoch stands for 'last'.")
    return text, rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from ltsam.io import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def _band(ax, x, runs: list[list[float | None]], label: str) -> None:
    """Mean line with a ±1 standard-deviation band over the runs (per x)."""
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in r] for r in runs], dtype=float)
    mean = np.nanmean(arr, axis=0) if len(arr) else arr
    std = np.nanstd(arr, axis=0, ddof=1) if len(arr) > 1 else np.zeros_like(mean)
    (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{label} (n={len(runs)})")
    if len(arr) > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def save_figures(out: Path, groups: Sequence[Group]) -> list[Path]:
    """``per_class_vs_size.png`` (per-class test accuracy against training-class size; last epoch and, with a
    validation split, best-val epoch) and ``shot_curves.png`` (test accuracy of each shot group per epoch),
    each a mean line with a ±1 std band over the seeds."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    sels = [s for s in ("last", "best_val") if any(r.picks.get(s) for g in groups for r in g.runs)]
    fig, axes = plt.subplots(1, len(sels), figsize=(6 * len(sels), 4.2), squeeze=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class without test images)
        for ax, sel in zip(axes[0], sels):
            for g in groups:
                runs = [r for r in g.runs if r.picks.get(sel) and r.picks[sel].get("per_class")]
                if not runs or not runs[0].cls_num_list:
                    continue
                order = np.argsort(runs[0].cls_num_list, kind="stable")
                x = np.asarray(runs[0].cls_num_list)[order]
                _band(ax, x, [[r.picks[sel]["per_class"][c] for c in order] for r in runs], g.label)
            ax.set_xscale("log")
            ax.set_xlabel("training images in class (log scale)")
            ax.set_ylabel("test accuracy (%)")
            what = "last epoch" if sel == "last" else "best-validation epoch"
            ax.set_title(f"{what} (mean, ±1 std band over seeds)",
                         fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "per_class_vs_size.png", dpi=120)
        plt.close(fig)
        written.append(out / "per_class_vs_size.png")

        keys = [("test_top1", "all classes")] + [(f"{s}_acc", f"{s}-shot") for s in SHOTS]
        keys = [(k, t) for k, t in keys if any(row.get(k) is not None for g in groups for r in g.runs
                                               for row in r.curves)]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
        for ax, (key, title) in zip(axes[0], keys):
            for g in groups:
                length = min((len(r.curves) for r in g.runs), default=0)
                if not length:
                    continue
                x = np.arange(1, length + 1)
                _band(ax, x, [[row.get(key) for row in r.curves[:length]] for r in g.runs], g.label)
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{title} (mean, ±1 std over seeds)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "shot_curves.png", dpi=120)
        plt.close(fig)
        written.append(out / "shot_curves.png")
    return written


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, partial: bool = False,
                 figures: bool = True) -> tuple[str, Path]:
    """Read the runs, write report.md, report.csv and the figures into ``out``; return (text, out)."""
    from ltsam.io import write_text

    folders = find_runs(paths)
    results = [read_run(p, partial) for p in folders]
    skipped = [p for p, r in zip(folders, results) if r is None]
    runs = [r for r in results if r is not None]
    if not runs:
        raise UserError(f"none of the {len(folders)} run folder(s) has finished (no final.json); wait for them, "
                        f"or pass --partial to report their last finished epoch")
    groups = group_runs(runs)
    text, rows = table(groups)
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        text += (f"\nLeft out: {len(skipped)} run(s) with no finished epoch ({names})." if partial else
                 f"\nLeft out: {len(skipped)} unfinished run(s) ({names}); --partial includes them.")
    out = Path(out) if out else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.md", text + "\n")
    write_csv(out / "report.csv", rows)
    if figures:
        save_figures(out, groups)
    return text, out


def add_report_command(sub) -> None:
    p = sub.add_parser("report", help="mean ± std over seeds of run or sweep folders (Markdown, CSV, figures)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run folders, sweep folders or folders of runs")
    p.add_argument("--out", help="where report.md, report.csv and the figures go (default: FIRST_PATH/report)")
    p.add_argument("--partial", action="store_true",
                   help="include unfinished runs (their last finished epoch stands for 'last')")
    p.add_argument("--no-figures", action="store_true", help="only the table and the CSV")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    text, out = build_report(args.paths, args.out, args.partial, not args.no_figures)
    print(text)
    print(f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}"
          + ("" if args.no_figures else f", {out / 'per_class_vs_size.png'}, {out / 'shot_curves.png'}"))
    return 0
