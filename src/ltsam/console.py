"""Results for people in the terminal: the per-class table, sweeps, and the console that prints them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def console():
    """A rich console that keeps wide tables readable in logs (non-terminal output gets 160 columns)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def fmt(v: float | None) -> str:
    """A percentage with two decimals, or "-" for none."""
    return "-" if v is None else f"{v:.2f}"


def print_results(result: dict[str, Any], classes: Sequence[str], cls_num_list: Sequence[int],
                  title: str = "Results") -> None:
    """Per-class accuracy with class sizes, then many/medium/few and overall top-1."""
    from rich.table import Table

    out = console()
    table = Table(title=title)
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("train images", justify="right")
    table.add_column("shot")
    table.add_column("accuracy %", justify="right")
    for c, (name, n) in enumerate(zip(classes, cls_num_list)):
        shot = "many" if n > 100 else ("few" if n < 20 else "medium")
        table.add_row(str(c), str(name), str(n), shot, fmt(result["per_class_acc"][c]))
    out.print(table)
    groups = result["shot_acc"]
    out.print(f"many-shot {fmt(groups['many'])}   medium-shot {fmt(groups['medium'])}   "
                  f"few-shot {fmt(groups['few'])}   overall top-1 {fmt(result['top1'])}   "
                  f"top-5 {fmt(result['top5'])}")


def print_sweep(rows: Sequence[dict[str, Any]], title: str) -> None:
    """One line per tau of a sweep (post-hoc logit adjustment, tau-normalisation): top-1, top-5, shot groups."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("tau", "top-1", "top-5", "many", "medium", "few"):
        table.add_column(name, justify="right")
    for r in rows:
        g = r["shot_acc"]
        table.add_row(f"{r['tau']:g}", fmt(r["top1"]), fmt(r["top5"]), fmt(g["many"]), fmt(g["medium"]),
                      fmt(g["few"]))
    console().print(table)
