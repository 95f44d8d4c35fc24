"""Results for people: the terminal table and the run folder's figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


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


def save_figures(out_dir: Path, result: dict[str, Any], classes: Sequence[str],
                 cls_num_list: Sequence[int], confusion: torch.Tensor) -> None:
    """``per_class_accuracy.png`` (accuracy against class size) and ``confusion_matrix.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [a if a is not None else float("nan") for a in result["per_class_acc"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(cls_num_list, acc, c=range(len(acc)), cmap="viridis")
    ax.set_xscale("log")
    ax.set_xlabel("training images in class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Per-class accuracy (top-1 {result['top1']:.2f}%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "per_class_accuracy.png", dpi=120)
    plt.close(fig)

    conf = confusion.double()
    norm = conf / conf.sum(1, keepdim=True).clamp_min(1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * n), max(4, 0.3 * n)))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (head to tail)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)


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
