"""``ltsam report RUN_OR_SWEEP ...``: runs grouped by configuration (all settings but the seed), each group's
mean ± standard deviation over its seeds, as a Markdown table (printed and written), a CSV and figures.

Three ways to pick a run's number, side by side:

- last: the test accuracy after the final epoch;
- best val: the test accuracy at the epoch of the highest validation top-1 (``--val-per-class``), chosen on
  held-out images: the honest way to select an epoch;
- best test: the highest test top-1 over the epochs, the paper's protocol; it selects on the test set and is
  shown for comparison only.

What counts (:mod:`ltsam.summary_runs`): folders with ltsam's run marker (.ltsam-run) whose run finished
(final.json with all its epochs; --partial adds unfinished runs, marked), each run once: a copied run folder
(the same run id) or two runs of one configuration and seed count once, with a warning. Folders left out are
named under the table. A damaged config.json, final.json or metrics.jsonl line stops the report with one line
naming the file. A second-stage run (``ltsam finetune``) groups by its stage, options and recipe on its
parent's configuration; its seed is the parent's, so stages on parents of seeds 0, 1, 2 are three seeds.

Standard deviations are sample standard deviations, s = sqrt(sum_i (x_i - mean)^2 / (n - 1)), over the n runs
of a group; where only k of them have a value (a diverged run's null), the cell says "(k of n)". The report
folder gets a .ltsam-report marker: --out must be new, empty or an earlier report's folder, so nothing else is
overwritten. One run's own table and figures are :mod:`ltsam.console`'s and :mod:`ltsam.figures`'s.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ltsam.console import fmt
from ltsam.errors import UserError
from ltsam.runs import RUN_MARKER
from ltsam.summary_runs import (
    FOREIGN,
    GROUP_IGNORES,
    SHOTS,
    RunResult,
    Selection,
    find_runs,
    names,
    seedless,
    select_runs,
)

__all__ = ["GROUP_IGNORES", "RunResult", "build_report", "find_runs", "group_runs", "select_runs", "table"]

SELECTIONS = ("last", "best_val", "best_test")
REPORT_MARKER = ".ltsam-report"  # written first into a report folder: what lets a later report write there
REPORT_FORMAT = "ltsam-report-v1"


@dataclass
class Group:
    label: str
    config: dict[str, Any]  # the settings that define it (RunResult.settings)
    runs: list[RunResult]

    def values(self, selection: str, metric: str) -> list[float]:
        """The values of the runs that have one (a diverged run's null top-1 has none)."""
        out = []
        for r in self.runs:
            pick = r.picks.get(selection)
            if pick is not None and pick.get(metric) is not None:
                out.append(float(pick[metric]))
        return out


def _group_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in GROUP_IGNORES}, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    """Runs grouped by their configuration without the seed (and the settings that do not change results),
    in the order first seen; each group labelled by its run-folder name without ``_seed<N>`` (``ce_seed0_crt``:
    ``ce_crt``), or, where those differ, by the settings in which the groups differ."""
    by_key: dict[str, list[RunResult]] = {}
    for r in runs:
        by_key.setdefault(_group_key(r.settings), []).append(r)
    groups = [Group("", rs[0].settings, sorted(rs, key=lambda r: (r.seed, r.stage_seed or 0)))
              for rs in by_key.values()]
    differing = sorted({k for g in groups for k in g.config if k not in GROUP_IGNORES
                        and len({json.dumps(h.config.get(k), default=str) for h in groups}) > 1})
    for g in groups:
        # a --seeds pack's members (OUT/seed0, OUT/seed1, ...) take their pack folder's name
        stems = {seedless(r.path.name) or r.path.parent.name for r in g.runs}
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


def _cell(values: Sequence[float], n: int) -> str:
    """mean ± std of the values, with ``(k of n)`` where only k of the group's n runs have a value."""
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"
    return text if len(values) >= n else f"{text} ({len(values)} of {n})"


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
    notes, rows, fewer = [], [], False
    for g in groups:
        paper, diff = _paper(g)
        if diff and paper != "–":
            notes.append(f"‡ {g.label}: the paper's figure is for the recipe as published; these runs differ in "
                         f"{diff}.")
            paper += " ‡"
        n = len(g.runs)
        cells = [g.label, str(n)]
        cells += [_cell(g.values("last", m), n) for m in ("top1", *SHOTS)]
        if has_val:
            cells += [_cell(g.values("best_val", m), n) for m in ("top1", *SHOTS)]
        cells += [_cell(g.values("best_test", "top1"), n), paper]
        fewer = fewer or any(" of " in c for c in cells[2:])
        lines.append("| " + " | ".join(cells) + " |")
        row: dict[str, Any] = {"config": g.label, "n": len(g.runs), "seeds": " ".join(str(r.seed) for r in g.runs),
                               "complete": sum(r.complete for r in g.runs),
                               "epochs": " ".join(sorted({str(r.epochs_done) for r in g.runs}))}
        for sel in SELECTIONS:
            for m in ("top1", *SHOTS):
                values = g.values(sel, m)
                mean, std = mean_std(values)
                row[f"{sel}_{m}_mean"], row[f"{sel}_{m}_std"], row[f"{sel}_{m}_n"] = mean, std, len(values)
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
        *(["(k of n): only k of the group's n runs have that value (e.g. a diverged run's null); the mean and "
           "std are over those k."] if fewer else []),
        *notes])
    unfinished = [r for g in groups for r in g.runs if not r.complete]
    if unfinished:
        which = ", ".join(f"{r.path.name} ({r.epochs_done} of {r.epochs if r.epochs is not None else '?'} epochs)"
                          for r in unfinished)
        text += f"\n* Includes unfinished runs (--partial): {which}; their last finished epoch stands for 'last'."
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
                runs = [r for r in g.runs if (pick := r.picks.get(sel)) and pick.get("per_class")]
                if not runs or not runs[0].cls_num_list:
                    continue
                order = np.argsort(runs[0].cls_num_list, kind="stable")
                x = np.asarray(runs[0].cls_num_list)[order]
                _band(ax, x, [[cast(dict, r.picks[sel])["per_class"][c] for c in order] for r in runs], g.label)
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


def _left_out(selection: Selection, partial: bool) -> list[str]:
    """The report's lines on folders left out, and on runs counted once."""
    lines = []
    if selection.foreign:
        lines.append(f"Left out: {len(selection.foreign)} folder(s), {FOREIGN} ({names(selection.foreign)}).")
    if selection.unfinished:
        lines.append(f"Left out: {len(selection.unfinished)} unfinished run(s) ({names(selection.unfinished)}); "
                     f"--partial includes them.")
    if selection.empty:
        lines.append(f"Left out: {len(selection.empty)} run(s) with no finished epoch ({names(selection.empty)}).")
    for members, why in selection.merged:
        lines.append(f"Warning: counted once: {', '.join(str(r.path) for r in members)} — {why}; the first is "
                     f"the one counted.")
    return lines


def check_report_folder(out: Path) -> None:
    """Refuse an ``--out`` that the report did not make: a file, or a folder holding files but no
    ``.ltsam-report`` marker (the report never overwrites a file it did not write)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    if out.is_dir() and not _is_report_folder(out) and any(out.iterdir()):
        raise UserError(f"--out {out} holds files that ltsam report did not write (no {REPORT_MARKER} marker); "
                        f"choose another --out (a new or empty folder), or move its files away")


def _is_report_folder(out: Path) -> bool:
    try:
        return (out / REPORT_MARKER).read_text().startswith("ltsam-report-v")
    except (OSError, UnicodeDecodeError):
        return False


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, partial: bool = False,
                 figures: bool = True) -> tuple[str, Path]:
    """Read the runs, write report.md, report.csv and the figures into ``out`` (marked as a report folder);
    return (text, out)."""
    from ltsam.io import write_text

    out = Path(out) if out else Path(paths[0]) / "report"
    check_report_folder(out)  # before any work
    folders = find_runs(paths)
    selection = select_runs(folders, partial)
    if not selection.runs:
        if len(selection.foreign) == len(folders):
            raise UserError(f"none of the {len(folders)} folder(s) with a config.json is an ltsam run folder (no "
                            f"{RUN_MARKER} marker); pass folders that ltsam train or ltsam finetune wrote")
        raise UserError(f"none of the {len(folders)} run folder(s) has finished (final.json with all its epochs); "
                        f"wait for them, or pass --partial to report their last finished epoch")
    groups = group_runs(selection.runs)
    text, rows = table(groups)
    notes = _left_out(selection, partial)
    if notes:
        text += "\n" + "\n".join(notes)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror}); choose a writable location") from None
    if not _is_report_folder(out):
        write_text(out / REPORT_MARKER, f"{REPORT_FORMAT}\n")
    write_text(out / "report.md", text + "\n")
    write_csv(out / "report.csv", rows)
    if figures:
        save_figures(out, groups)
    return text, out
