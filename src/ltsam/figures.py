"""A run folder's figures: per-class accuracy against class size, and the row-normalised confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


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
